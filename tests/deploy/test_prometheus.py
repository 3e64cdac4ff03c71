"""The monitoring under deploy/ proven with Debian's Prometheus: promtool checks the config, the rules and their unit
tests; a real Prometheus scrapes a real proxy (two workers) through a short journey, loads the alert rules, and
answers every PromQL expression of the Grafana dashboard with data; promtool lints the real scrape."""

from __future__ import annotations

import math
import re
import signal
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.deploy.dashboard import expressions, load_dashboard, metric_names, variable_queries
from tests.deploy.journey import SHOP, Journey, write_config
from tests.deploy.tools import DEPLOY, Prometheus, run, tool, wait_for
from tests.fakes.platforms import PERMANENT, FakeMeta, serve
from tests.procs import ProxyProcess, free_port
from tests.upstream import create_upstream

PROM = DEPLOY / "prometheus"
ALERTS = PROM / "alerts.yml"
RUNBOOKS = DEPLOY / "README.md"
WINDOW = "1m"  # stands for Grafana's $__rate_interval: the whole journey fits in it


def alert_names() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_config_and_its_rule_files():
    result = run(tool("promtool", "prometheus"), "check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_checks_the_alert_rules():
    result = run(tool("promtool", "prometheus"), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_promtool_runs_the_unit_tests_of_the_alerts():
    result = run(tool("promtool", "prometheus"), "test", "rules", str(PROM / "alerts.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_fires_one_that_does_not_and_a_runbook():
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = alert_names()
    assert len(names) == len(set(names))
    assert set(names) - fired == set(), "alerts no unit test sees firing"
    assert set(names) - quiet == set(), "alerts no unit test sees staying quiet"
    runbooks = RUNBOOKS.read_text()
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    for rule in rules:
        assert f"\n### {rule['alert']}\n" in runbooks, f"deploy/README.md has no runbook for {rule['alert']}"
        assert rule["annotations"]["runbook"] == f"deploy/README.md#{rule['alert'].lower()}"
        assert rule["labels"]["severity"] in ("critical", "warning")


def test_the_required_alerts_are_there():
    # What the on-call person must hear: readiness, 5xx ratio, p99, outbox age, dead letters, lost writes, reloads.
    assert set(alert_names()) >= {"HaloTrackDown", "HaloTrackNotReady", "HaloTrackUpstream5xxRatio",
                                  "HaloTrackLatencyP99High", "HaloTrackOutboxStalled", "HaloTrackDeadLetters",
                                  "HaloTrackLostWrites", "HaloTrackConfigReloadFailed"}


def prometheus_config(metrics_port: int) -> dict:
    """deploy/prometheus/prometheus.yml with its targets replaced by the test's proxy and a 1 s scrape."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    config["rule_files"] = [str(PROM / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    return config


def substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        expr = expr.replace(f"${name}", value).replace(f"${{{name}}}", value)
    return expr.replace("$__rate_interval", WINDOW).replace("$__range", "5m")


async def test_every_dashboard_expression_returns_data_from_a_real_prometheus(tmp_path: Path, aiohttp_server,
                                                                               database):
    meta = FakeMeta()
    meta.base = await serve(aiohttp_server, meta)
    upstream = await aiohttp_server(create_upstream())
    config = tmp_path / "tenants.yaml"
    write_config(config, upstream.port, free_port(), meta=meta)
    proxy = await ProxyProcess(config, workers=2, env={"HALO_DATABASE_URL": database.dsn}).start(SHOP)
    prometheus = None
    try:
        prometheus = await Prometheus(tmp_path / "prometheus", prometheus_config(proxy.metrics_port)).start()

        async def target_up() -> bool:
            targets = (await prometheus.api("targets"))["activeTargets"]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        await wait_for(target_up, "the proxy's metrics to be scraped")
        journey = Journey(proxy.base)

        async def scraped(expr: str, at_least: float) -> None:
            seen: list[float | None] = [None]

            async def check() -> bool:
                seen[0] = await prometheus.value(expr)
                return seen[0] is not None and seen[0] >= at_least

            try:
                await wait_for(check, f"{expr} >= {at_least}")
            except AssertionError as err:
                raise AssertionError(f"{err}; it is {seen[0]}\n{await prometheus.query('halo_requests_total')}"
                                     ) from None

        # Round 1: Meta refuses the first conversion for good (a dead letter).
        meta.answer(PERMANENT)
        first = await journey.visitors()
        await journey.others()
        await journey.convert(first[0], 1)
        await meta.wait_for_exchanges(1, within=20)
        await scraped('sum(halo_forwards_dead_total{platform="meta"})', 1)
        await scraped('sum(halo_requests_total{tenant="shop"})', 5)
        # Round 2, after a scrape of round 1, so that every rate has an increase to show; and a reload.
        journey.round = 2
        second = await journey.visitors()
        await journey.others()
        await journey.convert(second[1], 2)
        proxy.signal(signal.SIGHUP)
        await scraped('sum(halo_forwards_sent_total{platform="meta"})', 1)
        await scraped('sum(halo_config_reloads_total{outcome="ok"})', 2)  # both workers
        await scraped('sum(halo_conversions_total{tenant="shop"})', 4)
        await scraped('sum(halo_requests_total{tenant="shop"})', 10)
        await scraped("min(halo_ready)", 1)

        dashboard = load_dashboard()
        # The template variables first: their values stand in the panels' queries, as Grafana does.
        values: dict[str, str] = {"datasource": "prometheus"}
        for name, (metric_selector, label) in variable_queries(dashboard).items():
            selector = substitute(metric_selector, values)
            found = await prometheus.api(f"label/{label}/values", **{"match[]": selector})
            assert found, f"variable ${name}: no {label} values for {selector}"
            # A multi-value selection as Grafana writes it: each value regex-escaped inside a PromQL string.
            values[name] = "(" + "|".join(re.escape(v).replace("\\", "\\\\") for v in found) + ")"
            if name == "tenant":
                assert {"shop", "news", "gone"} <= set(found), found

        known = set(await prometheus.api("label/__name__/values"))
        problems: list[str] = []
        for panel, expr in expressions(dashboard):
            for name in metric_names(expr):
                if name not in known:
                    problems.append(f"{panel}: metric {name} is not exported")
            try:
                result = await prometheus.query(substitute(expr, values))
            except AssertionError as err:
                problems.append(f"{panel}: {expr}: {err}")
                continue
            numbers = [float(sample["value"][1]) for sample in result]
            if not numbers:
                problems.append(f"{panel}: no data for {substitute(expr, values)}")
            elif all(math.isnan(n) for n in numbers):
                problems.append(f"{panel}: only NaN for {substitute(expr, values)}")
        assert problems == [], "\n".join(problems)

        # The alert rules loaded from deploy/ evaluate on the real data without error, and a healthy journey
        # makes none of them fire or even pend.
        groups = (await prometheus.api("rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert sorted(rule["name"] for rule in rules) == sorted(alert_names())

        async def evaluated() -> bool:
            rules = [r for g in (await prometheus.api("rules"))["groups"] for r in g["rules"]]
            return all(r.get("lastEvaluation", "").startswith("20") and r["health"] == "ok" for r in rules)

        await wait_for(evaluated, "every alert rule to be evaluated without error")
        alerts = (await prometheus.api("alerts"))["alerts"]
        unexpected = [a for a in alerts if a["labels"]["alertname"] != "HaloTrackDeadLetters"]
        assert unexpected == [], unexpected
        assert any(a["labels"]["alertname"] == "HaloTrackDeadLetters" and a["labels"]["platform"] == "meta"
                   for a in alerts), alerts

        # promtool's naming lint on the proxy's real scrape (both workers aggregated).
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics") as resp:
                scrape = await resp.text()
        for name in ("halo_requests_total", "halo_upstream_errors_total", "halo_ready", "halo_outbox_depth",
                     "halo_config_last_reload_successful"):
            assert f"\n{name}" in scrape, name
        lint = run(tool("promtool", "prometheus"), "check", "metrics", stdin=scrape)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    finally:
        if prometheus is not None:
            await prometheus.stop()
        assert await proxy.stop() == 0


def test_the_dashboard_covers_what_ops_watch():
    dashboard = load_dashboard()
    used = {name for _, expr in expressions(dashboard) for name in metric_names(expr)}
    wanted = {
        "halo_requests_total", "halo_request_duration_seconds_bucket", "halo_upstream_duration_seconds_bucket",
        "halo_upstream_errors_total", "halo_visits_total", "halo_injections_total", "halo_conversions_total",
        "halo_forward_attempts_total", "halo_forwards_dead_total", "halo_outbox_depth",
        "halo_outbox_oldest_pending_seconds", "halo_storage_errors_total", "halo_storage_lost_writes_total",
        "halo_config_reloads_total", "halo_ready", "halo_conversion_batch_size_bucket",
        "halo_conversions_stored_alone_total", "halo_worker_restarts_total", "halo_forwards_released_total",
    }
    assert wanted - used == set()
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"tenant", "instance"} <= names


@pytest.mark.parametrize("path", sorted((DEPLOY / "grafana" / "provisioning").rglob("*.yml")),
                         ids=lambda p: p.name)
def test_grafana_provisioning_files_are_valid(path: Path):
    data = yaml.safe_load(path.read_text())
    assert data["apiVersion"] == 1
    if "datasources" in data:
        (source,) = data["datasources"]
        assert source["type"] == "prometheus" and source["url"].startswith("http://")
    else:
        (provider,) = data["providers"]
        assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
