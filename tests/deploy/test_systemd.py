"""deploy/systemd: the unit passes `systemd-analyze verify` (its binary pointed at this checkout's halo-proxy) and
scores as well hardened offline; its user comes from the sysusers file; everything it reads is laid out by
install.sh; it can write its data folder under ProtectSystem=strict; its stop outlasts the proxy's."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from halo_proxy import cli
from halo_proxy.config import StopSettings
from tests.deploy.tools import DEPLOY, run

SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "halo-proxy.service"
VENV_BIN = "/opt/halotrack/bin/halo-proxy"


def systemd_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (Debian's systemd package)", pytrace=False)
    return found


def service() -> dict[str, list[str]]:
    """The [Service] section, each key with all its values in order (systemd allows repeats)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in service()["Environment"]:
        env.update(dict(item.split("=", 1) for item in value.split()))
    return env


def test_systemd_analyze_verifies_the_unit(tmp_path: Path):
    halo_proxy = Path(sys.executable).parent / "halo-proxy"
    assert halo_proxy.exists()
    unit = tmp_path / "halo-proxy.service"
    unit.write_text(UNIT.read_text().replace(VENV_BIN, str(halo_proxy)))
    result = run(systemd_tool("systemd-analyze"), "verify", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_is_hardened():
    result = run(systemd_tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(UNIT))
    score = re.search(r"Overall exposure level for halo-proxy\.service: ([\d.]+)", result.stdout)
    assert score, result.stdout + result.stderr
    assert float(score[1]) <= 2.5, result.stdout


def test_the_user_comes_from_sysusers(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    result = subprocess.run([systemd_tool("systemd-sysusers"), f"--root={tmp_path}",
                             str(SYSTEMD / "halo-proxy.sysusers")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    user = service()["User"][0]
    entry = next(line for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
                 if line.startswith(f"{user}:"))
    assert entry.split(":")[5] == "/var/lib/halo" and entry.endswith("nologin")


def test_the_data_folder_is_writable_under_protect_system_strict():
    svc = service()
    env = environment()
    assert svc["ProtectSystem"] == ["strict"]
    assert svc["StateDirectory"] == ["halo"]  # /var/lib/halo, made, owned by the user and writable
    assert env["HALO_DATA_DIR"] == "/var/lib/halo"
    assert svc["WorkingDirectory"] == ["/var/lib/halo"]


def test_what_the_unit_reads_is_laid_out_by_install_sh():
    svc = service()
    env = environment()
    script = (SYSTEMD / "install.sh").read_text()
    assert subprocess.run(["sh", "-n", str(SYSTEMD / "install.sh")]).returncode == 0
    assert svc["ExecStart"] == [f"{VENV_BIN} serve"]
    assert svc["ExecStartPre"] == [f"{VENV_BIN} check-config --config {env['HALO_CONFIG']}"]
    assert '-m venv "$root/opt/halotrack"' in script
    assert '"$root/etc/halo/tenants.yaml"' in script and env["HALO_CONFIG"] == "/etc/halo/tenants.yaml"
    (credential,) = svc["LoadCredential"]
    name, path = credential.split(":")
    assert env["HALO_SECRET_KEY_FILE"] == f"%d/{name}" and path == "/etc/halo/secret_key"
    assert '"$root/etc/halo/secret_key"' in script
    assert svc["EnvironmentFile"] == ["-/etc/halo/env"] and '"$root/etc/halo/env"' in script
    assert "halo-proxy.sysusers" in script
    halo = {key for key in env if key.startswith("HALO_")}
    assert halo <= set(cli.SERVE_ENV.values()) | {"HALO_DATA_DIR", "HALO_SECRET_KEY_FILE"}


def test_the_stop_outlasts_the_proxy_and_reload_is_sighup():
    svc = service()
    stop = StopSettings()
    assert int(svc["TimeoutStopSec"][0]) >= stop.timeout_s + 5
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert svc["KillSignal"] == ["SIGTERM"]
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser["Install"]["WantedBy"] == "multi-user.target"
