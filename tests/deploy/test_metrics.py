"""The gauges the alerts stand on: halo_ready follows what readyz answers, halo_config_last_reload_successful the
last reload; and counters with closed label sets exist at zero before their first increment."""

from __future__ import annotations

from halo_proxy.app import READY_EVERY_S, STOPPING, create_app, reload_config
from halo_proxy.config import parse
from halo_proxy.metrics import Metrics
from tests.deploy.tools import wait_for

TENANT = "tenants:\n  - id: shop\n    hosts: [shop.localhost]\n    upstream: http://127.0.0.1:9\n"


def gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


async def test_ready_follows_readyz_and_drops_when_the_process_stops(aiohttp_server):
    metrics = Metrics()
    assert gauge(metrics, "halo_ready") == 0  # nothing checked yet
    app = create_app(parse(TENANT, "t.yaml", {}), metrics)
    server = await aiohttp_server(app)
    await wait_for(lambda: _value(metrics, "halo_ready", 1), "halo_ready to be 1")
    app[STOPPING].draining = True  # what SIGTERM does first
    await wait_for(lambda: _value(metrics, "halo_ready", 0), "halo_ready to be 0 while stopping",
                   within=READY_EVERY_S * 3)
    await server.close()
    assert gauge(metrics, "halo_ready") == 0


async def _value(metrics: Metrics, name: str, want: float) -> bool:
    return gauge(metrics, name) == want


async def test_the_last_reload_gauge_follows_each_reload(tmp_path, aiohttp_server):
    path = tmp_path / "t.yaml"
    path.write_text(TENANT)
    metrics = Metrics()
    app = create_app(parse(TENANT, str(path), {}), metrics)
    await aiohttp_server(app)
    assert gauge(metrics, "halo_config_last_reload_successful") == 1
    path.write_text("tenants: [{id: BAD}]\n")
    assert reload_config(app) is False
    assert gauge(metrics, "halo_config_last_reload_successful") == 0
    path.write_text(TENANT)
    assert reload_config(app) is True
    assert gauge(metrics, "halo_config_last_reload_successful") == 1


def test_storage_errors_exist_at_zero_for_every_operation():
    metrics = Metrics()
    for op in ("visits", "anon_events"):
        assert metrics.registry.get_sample_value("halo_storage_errors_total", {"op": op}) == 0
