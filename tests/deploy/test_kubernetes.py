"""deploy/kubernetes: every manifest valid (strict) against the Kubernetes API schemas of kubernetes-validate, and
the pieces agreeing with one another and with HaloTrack: probes on readyz and healthz, a rolling update that
waits for readiness, a preStop pause and a grace period that fit the tenant file's stop settings, the tenant
ConfigMap mounted as a folder (so its updates arrive) and watched, the Secret's names, the Service, the
PodDisruptionBudget and the HorizontalPodAutoscaler on the same pods."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from halo_proxy import cli
from halo_proxy.config import parse
from halo_proxy.server import StartupError, load_keys
from tests.deploy.tools import DEPLOY, ROOT

K8S = DEPLOY / "kubernetes"
VERSIONS = ["1.30.0", "1.37.0"]  # the oldest still commonly run, and the newest the schemas know
HALO_VARIABLES = set(cli.SERVE_ENV.values()) | {"HALO_DATABASE_POOL_SIZE", "HALO_DATABASE_STATEMENT_CACHE",
                                                "HALO_DATA_DIR", "HALO_KEY_VERSION"}


def manifests() -> dict[str, dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"]] = doc
    return found


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"),
                         ids=lambda p: p.name)
def test_each_manifest_is_valid_against_the_kubernetes_schema(path: Path, version: str):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_is_strict():
    bad = copy.deepcopy(manifests()["Deployment"])
    bad["spec"]["replicaz"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)


def test_the_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    for doc in manifests().values():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"]


def tenant_settings():  # type: ignore[no-untyped-def]
    m = manifests()
    text = m["ConfigMap"]["data"]["tenants.yaml"]
    env = {name: "a-webhook-secret-0123456789" for name in m["Secret"]["stringData"]}
    return parse(text, "configmap.yaml", env)


def container() -> dict:
    (c,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def test_replicas_roll_one_at_a_time_and_wait_for_readyz():
    spec = manifests()["Deployment"]["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/_halo/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/_halo/healthz"
    assert tenant_settings().server.reserved_prefix == "/_halo"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "metrics": 9102}  # the image's HALO_PORT and HALO_METRICS_PORT
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "HALO_PORT=8080" in dockerfile and "HALO_METRICS_PORT=9102" in dockerfile


def test_the_stop_fits_the_grace_period_and_the_drain_outlasts_the_probe():
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    c = container()
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = int(command[1])
    stop = tenant_settings().server.stop
    assert pod["terminationGracePeriodSeconds"] >= pause + stop.timeout_s + 5
    probe = c["readinessProbe"]
    assert stop.drain_s >= probe["periodSeconds"] * probe["failureThreshold"]


def test_the_tenant_configmap_is_mounted_as_a_folder_and_watched():
    c = container()
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "tenants"]
    assert "subPath" not in mount, "a subPath mount never sees the ConfigMap's updates"
    assert mount["mountPath"] == "/etc/halo" and mount["readOnly"]
    assert "HALO_CONFIG=/etc/halo/tenants.yaml" in (ROOT / "Dockerfile").read_text()
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tenants"]
    assert volume["configMap"]["name"] == manifests()["ConfigMap"]["metadata"]["name"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert float(env["HALO_WATCH_CONFIG_S"]) > 0
    assert env["HALO_DATABASE_STATEMENT_CACHE"] == "0"  # through PgBouncer in transaction mode
    assert set(env) <= HALO_VARIABLES, set(env) - HALO_VARIABLES


def test_secrets_come_from_the_secret_and_its_placeholders_refuse_to_start(monkeypatch):
    m = manifests()
    c = container()
    assert c["envFrom"] == [{"secretRef": {"name": m["Secret"]["metadata"]["name"]}}]
    data = m["Secret"]["stringData"]
    assert {"HALO_SECRET_KEY", "HALO_DATABASE_URL"} <= set(data)
    tenant_vars = set(re.findall(r"\$\{(\w+)\}", m["ConfigMap"]["data"]["tenants.yaml"]))
    assert tenant_vars <= set(data)
    monkeypatch.delenv("HALO_SECRET_KEY_FILE", raising=False)
    monkeypatch.setenv("HALO_SECRET_KEY", data["HALO_SECRET_KEY"])
    with pytest.raises(StartupError, match="HALO_SECRET_KEY"):
        load_keys(generate=False)


def test_the_pods_are_locked_down_with_resource_requests():
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    c = container()
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert "USER 10001:10001" in (ROOT / "Dockerfile").read_text()
    assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/var/lib/halo"} <= mounts  # the workers' metrics files; the data folder
    requests = c["resources"]["requests"]
    assert requests["cpu"] and requests["memory"] and c["resources"]["limits"]["memory"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert int(env["HALO_WORKERS"]) == int(float(requests["cpu"]))  # a worker per requested core


def test_service_pdb_and_hpa_select_the_same_pods():
    m = manifests()
    labels = m["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert m["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert m["Service"]["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in container()["ports"]}
    assert {p["targetPort"] for p in m["Service"]["spec"]["ports"]} <= names
    assert m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert m["PodDisruptionBudget"]["spec"]["minAvailable"] < m["Deployment"]["spec"]["replicas"]
    hpa = m["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": m["Deployment"]["metadata"]["name"]}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
