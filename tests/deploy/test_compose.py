"""deploy/docker-compose.yml: `docker compose config` where Docker's compose is installed; always parsed and
checked here, since no Docker engine runs on this machine: the services, two proxy replicas behind the one
published port (HAProxy health-checking readyz, checked with Debian's haproxy), health checks, volumes, every
mounted file present, no secret in plain text, and the files it mounts valid for what reads them."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from halo_proxy import cli
from halo_proxy.config import parse
from tests.deploy.tools import DEPLOY, ROOT, run, tool

COMPOSE = DEPLOY / "docker-compose.yml"
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|DATABASE_URL|DSN", re.IGNORECASE)
# Every HALO_ variable a proxy service may set, as the proxy reads them.
HALO_VARIABLES = set(cli.SERVE_ENV.values()) | {
    "HALO_DATA_DIR", "HALO_KEY_VERSION", "HALO_DATABASE_POOL_SIZE", "HALO_DATABASE_STATEMENT_CACHE",
    "HALO_SECRET_KEY_FILE", "HALO_PREVIOUS_SECRET_KEYS_FILE", "HALO_DATABASE_URL_FILE"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<: *proxy) resolved as compose resolves them


def proxies(data: dict) -> dict[str, dict]:
    return {name: svc for name, svc in data["services"].items() if svc.get("image") == "halotrack:local"}


def test_docker_compose_config_where_compose_is_installed(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        return  # no compose here: the checks below stand in for it (deploy/README.md says so)
    work = tmp_path / "deploy"
    shutil.copytree(DEPLOY, work, ignore=shutil.ignore_patterns("secrets"))
    subprocess.run(["sh", str(work / "make-secrets.sh")], check=True, capture_output=True)
    result = subprocess.run([docker, "compose", "-f", str(work / "docker-compose.yml"), "config", "--quiet"],
                            capture_output=True, text=True, cwd=work)
    assert result.returncode == 0, result.stderr


def test_the_services_two_replicas_behind_one_port():
    data = compose()
    services = data["services"]
    assert {"postgres", "lb", "prometheus", "grafana"} <= set(services)
    replicas = proxies(data)
    assert sorted(replicas) == ["proxy-1", "proxy-2"]
    one, two = replicas.values()
    assert {k: v for k, v in one.items() if k != "hostname"} == {k: v for k, v in two.items() if k != "hostname"}
    assert one["build"]["context"] == ".." and (DEPLOY / one["build"]["context"] / "Dockerfile").exists()
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    visitor_ports = [p for ports in published.values() for p in ports if not str(p).startswith("127.0.0.1:")]
    assert visitor_ports == ["8080:8080"] and "8080:8080" in published["lb"], published
    assert all("ports" not in svc for svc in replicas.values())
    haproxy = (DEPLOY / "compose" / "haproxy.cfg").read_text()
    for name in replicas:
        assert re.search(rf"^\s*server {name} {name}:8080 check$", haproxy, re.M), name
    assert "uri /_halo/readyz" in haproxy and "option forwardfor" in haproxy
    assert set(services["lb"]["depends_on"]) == set(replicas)
    for svc in replicas.values():
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_every_service_has_a_health_check_and_every_store_a_volume():
    data = compose()
    for name, svc in data["services"].items():
        check = svc.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
    for svc in proxies(data).values():
        assert svc["healthcheck"]["test"] == ["CMD", "halo-proxy", "healthcheck", "--ready"]
        assert svc["stop_grace_period"] == "40s"  # above server.stop.timeout_s (25 s)
    named = set(data["volumes"])
    for name, target in (("postgres", "/var/lib/postgresql/data"), ("prometheus", "/prometheus"),
                         ("grafana", "/var/lib/grafana")):
        mounts = data["services"][name]["volumes"]
        assert any(m.split(":")[0] in named and m.split(":")[1] == target for m in mounts), (name, mounts)


def test_every_mounted_file_exists_and_secrets_are_files_kept_out_of_git():
    data = compose()
    for name, svc in data["services"].items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    for name, secret in data["secrets"].items():
        assert secret["file"].startswith("./secrets/"), name
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/secrets/halo_secret_key"], cwd=ROOT)
    assert ignored.returncode == 0, "deploy/secrets/ must be in .gitignore"


def test_no_secret_in_plain_text():
    data = compose()
    used_secrets = set()
    for name, svc in data["services"].items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            value = str(value)
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", value), f"{name}.{key} carries a password"
            if SECRET_WORDS.search(key):
                assert key.endswith("_FILE"), f"{name}.{key}: a secret goes through a file (/run/secrets)"
                assert value.startswith("/run/secrets/"), f"{name}.{key}"
                used_secrets.add(value.removeprefix("/run/secrets/"))
        for secret in used_secrets & set(data["secrets"]):
            if any(str(v) == f"/run/secrets/{secret}" for v in env.values()):
                assert secret in svc.get("secrets", []), f"{name} reads {secret} without mounting it"
    assert used_secrets <= set(data["secrets"]), used_secrets - set(data["secrets"])
    text = COMPOSE.read_text()
    assert not re.search(r"(?i)(password|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9+/]{12,}", text)


def test_the_proxies_set_only_variables_halotrack_reads_and_the_tenant_file_is_valid(tmp_path):
    data = compose()
    (svc,) = list(proxies(data).values())[:1]
    env = svc["environment"]
    halo = {key for key in env if key.startswith("HALO_")}
    assert halo <= HALO_VARIABLES, halo - HALO_VARIABLES
    tenants = (DEPLOY / "compose" / "tenants.yaml").read_text()
    variables = {f"{name}_FILE" for name in re.findall(r"\$\{(\w+)\}", tenants)}
    assert variables <= set(env), variables - set(env)
    files = {}
    for variable in variables:
        path = tmp_path / variable
        path.write_text("a-webhook-secret-0123456789\n")
        files[variable] = str(path)
    settings = parse(tenants, "compose/tenants.yaml", files)
    lb_address = data["services"]["lb"]["networks"]["halo"]["ipv4_address"]
    assert [str(n) for n in settings.server.trusted_proxies] == [f"{lb_address}/32"]
    subnet = ipaddress.ip_network(data["networks"]["halo"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(lb_address) in subnet
    site = settings.tenants[0].upstream.split("//")[1].split(":")[0]
    assert site in data["services"], site
    # HAProxy takes a replica out after `fall` failed checks `inter` apart: the drain must outlast that.
    haproxy = (DEPLOY / "compose" / "haproxy.cfg").read_text()
    inter = int(re.search(r"inter (\d+)s", haproxy)[1])
    fall = int(re.search(r"fall (\d+)", haproxy)[1])
    assert settings.server.stop.drain_s >= inter * fall


def test_prometheus_scrapes_both_replicas_and_grafana_reads_prometheus_and_the_dashboard():
    data = compose()
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(f"{name}:9102" for name in proxies(data))
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "halotrack.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in data["services"]["grafana"]["volumes"]


def test_haproxy_accepts_the_load_balancer_config():
    haproxy = tool("haproxy", "haproxy")
    result = run(haproxy, "-c", "-f", str(DEPLOY / "compose" / "haproxy.cfg"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_secrets_makes_each_file_once_and_the_database_url_matches_the_password(tmp_path):
    script = tmp_path / "make-secrets.sh"
    shutil.copy(DEPLOY / "make-secrets.sh", script)
    subprocess.run(["sh", str(script)], check=True, capture_output=True)
    secrets = tmp_path / "secrets"
    made = {p.name: p.read_text().strip() for p in secrets.iterdir()}
    assert set(made) == set(compose()["secrets"])
    assert made["halo_database_url"] == f"postgresql://halo:{made['postgres_password']}@postgres:5432/halo"
    assert len(bytes.fromhex(made["halo_secret_key"])) == 32
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"
    again = subprocess.run(["sh", str(script)], check=True, capture_output=True, text=True)
    assert again.stdout == "" and {p.name: p.read_text().strip() for p in secrets.iterdir()} == made


@pytest.mark.parametrize("path", [COMPOSE, DEPLOY / "compose" / "tenants.yaml"], ids=lambda p: p.name)
def test_files_carry_no_tabs(path: Path):
    assert "\t" not in path.read_text() and os.path.getsize(path) > 0


def loopback_haproxy_config(port: int, health_port: int, replicas: list[int]) -> str:
    """compose/haproxy.cfg on loopback: the replicas' addresses instead of compose's names, no Docker DNS, and
    checks ten times as often (the test's drain is ten times shorter)."""
    text = (DEPLOY / "compose" / "haproxy.cfg").read_text()
    text = re.sub(r"\nresolvers docker\n(    .*\n)+", "\n", text)
    text = text.replace(" resolvers docker init-addr last,libc,none", "").replace("inter 2s", "inter 200ms")
    text = text.replace("bind :8080", f"bind 127.0.0.1:{port}").replace("bind :8405", f"bind 127.0.0.1:{health_port}")
    for n, replica in enumerate(replicas, 1):
        text = text.replace(f"server proxy-{n} proxy-{n}:8080 check", f"server proxy-{n} 127.0.0.1:{replica} check")
    assert "proxy-1:8080" not in text and "resolvers" not in text
    return text


async def test_a_replica_stopping_behind_haproxy_loses_no_request(tmp_path, aiohttp_server, database):
    """The compose design at work on loopback: HAProxy in front of two real replicas; one gets SIGTERM while
    visitors keep coming; readyz's 503 during the drain takes it out before its listener closes, and no request
    fails."""
    import asyncio
    import time

    import aiohttp

    from tests.deploy.tools import wait_for
    from tests.procs import ProxyProcess, free_port
    from tests.upstream import create_upstream

    upstream = await aiohttp_server(create_upstream())
    config = tmp_path / "tenants.yaml"
    config.write_text(f"""
server: {{stop: {{drain_s: 1, timeout_s: 10}}}}
tenants:
  - id: shop
    hosts: [shop.localhost]
    upstream: http://127.0.0.1:{upstream.port}
""")
    env = {"HALO_DATABASE_URL": database.dsn}
    one, two = ProxyProcess(config, env=env), ProxyProcess(config, env=env)
    await asyncio.gather(one.start("shop.localhost"), two.start("shop.localhost"))
    port, health = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(loopback_haproxy_config(port, health, [one.port, two.port]))
    log = open(tmp_path / "haproxy.log", "wb")
    lb = subprocess.Popen([tool("haproxy", "haproxy"), "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        async def served(proc: ProxyProcess) -> float:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{proc.metrics_port}/metrics") as resp:
                    text = await resp.text()
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("halo_requests_total{") and 'tenant="shop"' in line)

        async with aiohttp.ClientSession() as session:
            async def visit() -> int:
                async with session.get(f"http://127.0.0.1:{port}/page", headers={"Host": "shop.localhost"}) as r:
                    await r.read()
                    return r.status

            async def both_serve() -> bool:
                assert lb.poll() is None, (tmp_path / "haproxy.log").read_text()
                await visit()
                return await served(one) > 0 and await served(two) > 0

            await wait_for(both_serve, "HAProxy to send visitors to both replicas")
            statuses: list[int] = []
            one.signal(15)
            deadline = time.monotonic() + 4  # the drain (1 s), the close, and visitors after it
            while time.monotonic() < deadline:
                try:
                    statuses.append(await visit())
                except aiohttp.ClientError as err:
                    statuses.append(type(err).__name__)  # type: ignore[arg-type]
            assert await asyncio.to_thread(one.proc.wait, 15) == 0
            after = await served(two)
            for _ in range(10):
                statuses.append(await visit())
        assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
        assert await served(two) >= after + 10
        # HAProxy took it out on readyz's 503 (the drain), not on a refused connection after the close.
        down = [line for line in (tmp_path / "haproxy.log").read_text().splitlines() if "proxy-1 is DOWN" in line]
        assert down and "Layer7 wrong status, code: 503" in down[0], down
    finally:
        lb.terminate()
        lb.wait(10)
        log.close()
        await one.stop()
        assert await two.stop() == 0
