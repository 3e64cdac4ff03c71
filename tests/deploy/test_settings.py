"""What deployments set from outside the tenant file: the database pool and statement cache
(HALO_DATABASE_POOL_SIZE, HALO_DATABASE_STATEMENT_CACHE), and secrets read from mounted files (`NAME_FILE`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from halo_proxy.config import ConfigError, DatabaseSettings, database_settings, parse
from halo_proxy.server import StartupError, load_keys, open_database, secret_env
from tests.procs import TEST_SECRET

TENANT = """
tenants:
  - id: shop
    hosts: [shop.localhost]
    upstream: http://127.0.0.1:9
    webhook_secret: ${SHOP_WEBHOOK_SECRET}
"""


def test_database_settings_default_and_read_from_the_environment():
    assert database_settings({}) == DatabaseSettings()
    assert database_settings({"HALO_DATABASE_POOL_SIZE": "", "HALO_DATABASE_STATEMENT_CACHE": " "}) == \
        DatabaseSettings()
    got = database_settings({"HALO_DATABASE_POOL_SIZE": "8", "HALO_DATABASE_STATEMENT_CACHE": "0"})
    assert (got.pool_size, got.statement_cache_size) == (8, 0)


@pytest.mark.parametrize(("env", "error"), [
    ({"HALO_DATABASE_POOL_SIZE": "0"}, "HALO_DATABASE_POOL_SIZE: must be a whole number from 1 to 1000, not '0'"),
    ({"HALO_DATABASE_POOL_SIZE": "ten"}, "HALO_DATABASE_POOL_SIZE: must be a whole number from 1 to 1000, not 'ten'"),
    ({"HALO_DATABASE_STATEMENT_CACHE": "-1"},
     "HALO_DATABASE_STATEMENT_CACHE: must be a whole number from 0 to 100000, not '-1'"),
    ({"HALO_DATABASE_STATEMENT_CACHE": "off"},
     "HALO_DATABASE_STATEMENT_CACHE: must be a whole number from 0 to 100000, not 'off'"),
])
def test_bad_database_settings_name_the_variable(env, error):
    with pytest.raises(ConfigError) as raised:
        database_settings(env)
    assert raised.value.errors == [error]


def test_serve_refuses_a_bad_statement_cache_before_listening(tmp_path):
    config = tmp_path / "t.yaml"
    config.write_text(TENANT.replace("${SHOP_WEBHOOK_SECRET}", "whsec-0123456789"))
    env = {"PATH": "/usr/bin:/bin", "HALO_SECRET_KEY": TEST_SECRET, "HALO_DATABASE_URL": "postgresql://x@127.0.0.1:9/x",
           "HALO_DATABASE_STATEMENT_CACHE": "none"}
    result = subprocess.run([sys.executable, "-m", "halo_proxy", "serve", "--config", str(config), "--port", "0",
                             "--metrics-port", "0"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "HALO_DATABASE_STATEMENT_CACHE: must be a whole number from 0 to 100000, not 'none'" in result.stderr


def test_secrets_come_from_the_variable_else_from_the_file_it_names(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text(TEST_SECRET + "\n")
    monkeypatch.delenv("HALO_SECRET_KEY", raising=False)
    monkeypatch.setenv("HALO_SECRET_KEY_FILE", str(secret))
    assert secret_env("HALO_SECRET_KEY") == TEST_SECRET
    assert load_keys(generate=False).current_version == 1
    monkeypatch.setenv("HALO_SECRET_KEY", "a" * 64)
    assert secret_env("HALO_SECRET_KEY") == "a" * 64  # the variable itself wins
    monkeypatch.delenv("HALO_SECRET_KEY")
    monkeypatch.setenv("HALO_SECRET_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(StartupError, match=r"HALO_SECRET_KEY_FILE=.*missing cannot be read: No such file"):
        load_keys(generate=False)


def test_the_database_url_from_a_file_opens_no_embedded_server(tmp_path, monkeypatch):
    url = tmp_path / "url"
    url.write_text("postgresql://halo:s3cret@db.internal:6432/halo\n")
    monkeypatch.delenv("HALO_DATABASE_URL", raising=False)
    monkeypatch.setenv("HALO_DATABASE_URL_FILE", str(url))
    assert open_database() == ("postgresql://halo:s3cret@db.internal:6432/halo", None)


def test_tenant_file_variables_come_from_a_mounted_file_too(tmp_path):
    secret = tmp_path / "webhook"
    secret.write_text("whsec-from-a-file-0123456789\n")
    settings = parse(TENANT, "t.yaml", {"SHOP_WEBHOOK_SECRET_FILE": str(secret)})
    assert settings.tenants[0].webhook_secret == "whsec-from-a-file-0123456789"
    assert parse(TENANT, "t.yaml", {"SHOP_WEBHOOK_SECRET": "whsec-direct-0123456789",
                                    "SHOP_WEBHOOK_SECRET_FILE": str(secret)}).tenants[0].webhook_secret == \
        "whsec-direct-0123456789"
    with pytest.raises(ConfigError) as raised:
        parse(TENANT, "t.yaml", {"SHOP_WEBHOOK_SECRET_FILE": str(tmp_path / "nope")})
    assert raised.value.errors == [
        f"t.yaml:tenant[shop].webhook_secret: SHOP_WEBHOOK_SECRET_FILE={tmp_path / 'nope'} cannot be read: "
        "No such file or directory"]
    with pytest.raises(ConfigError) as raised:
        parse(TENANT, "t.yaml", {})
    assert raised.value.errors == ["t.yaml:tenant[shop].webhook_secret: environment variable SHOP_WEBHOOK_SECRET "
                                   "is not set"]
