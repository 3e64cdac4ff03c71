"""Delivery under a hanging platform: leads through `halo-proxy serve --workers 2` to the four fake platforms,
TikTok hanging for the whole run.

    python bench/delivery.py [--leads 2000] [--rate 100] [--hang tiktok]

HaloTrack runs as in production (a supervisor, two workers, the embedded PostgreSQL under a temporary
HALO_DATA_DIR, the default outbox settings: 10 s send timeout, 60 s lease). The fake platforms are the tests' own
(tests/fakes/platforms.py: real servers on loopback that check every payload), one of them told to hang. Signed
leads are posted at `--rate` per second; each 201 answer's time is kept, and each event's arrival at a platform is
timed, so the delivery delay is answer -> platform. GA4 leads carry no event id: their delay is measured from the
event's own `timestamp_micros` (the conversion's time, on the same clock) and a duplicate is the same
(client_id, timestamp_micros) twice. Prints, per platform: events accepted, delay p50/p99/max, duplicates.
Target: the healthy platforms' p99 under 2 s, duplicates 0 everywhere. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from leads import HOST, SECRET, free_port, sign, wait_ready  # noqa: E402  (the signed-lead benchmark's own helpers)

from tests.fakes.platforms import HANG, FakeDataManager, FakeGa4, FakeMeta, FakeTikTok  # noqa: E402

PLATFORMS = ("meta", "ga4", "google_ads", "tiktok")


def keys_of(name: str, body: dict) -> list[tuple[str, float | None]]:
    """(dedup key, the event's own time in seconds when the key does not lead back to a lead) per event."""
    if name == "meta":
        return [(e["event_id"], None) for e in body.get("data", [])]
    if name == "tiktok":
        return [(e["event_id"], None) for e in body.get("data", [])]
    if name == "google_ads":
        return [(e["transactionId"], None) for e in body.get("events", [])]
    return [(f"{body.get('client_id')}:{e['timestamp_micros']}", e["timestamp_micros"] / 1e6)
            for e in body.get("events", [])]


async def start_fakes(hang: str) -> tuple[dict, list, dict]:
    fakes = {"meta": FakeMeta(), "ga4": FakeGa4(), "google_ads": FakeDataManager(), "tiktok": FakeTikTok()}
    arrivals: dict[str, list[tuple[float, str, float | None]]] = {name: [] for name in PLATFORMS}
    runners = []
    for name, fake in fakes.items():
        original = fake.respond

        def respond(answer, exchange, original=original, name=name):  # type: ignore[no-untyped-def]
            at = time.time()
            if exchange.valid:
                arrivals[name].extend((at, key, own) for key, own in keys_of(name, exchange.body))
            return original(answer, exchange)

        fake.respond = respond  # type: ignore[method-assign]
        if name == hang:
            fake.set_mode(HANG)
        runner = web.AppRunner(fake.app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        fake.base = f"http://127.0.0.1:{port}"
        runners.append(runner)
    return fakes, runners, arrivals


def tenant_yaml(upstream_port: int, fakes: dict) -> str:
    meta, ga4, gads, tiktok = fakes["meta"], fakes["ga4"], fakes["google_ads"], fakes["tiktok"]
    return f"""
server:
  stop: {{drain_s: 0, timeout_s: 15}}
tenants:
  - id: bench
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    webhook_secret: {SECRET}
    forwarders:
      meta: {{pixel_id: "{meta.pixel_id}", access_token: {meta.access_token}, base_url: "{meta.base}"}}
      ga4: {{measurement_id: {ga4.measurement_id}, api_secret: {ga4.api_secret}, base_url: "{ga4.base}"}}
      google_ads: {{account_id: "{gads.account_id}", conversion_action_id: "{gads.conversion_action_id}",
                    access_token: {gads.access_token}, base_url: "{gads.base}"}}
      tiktok: {{pixel_code: {tiktok.pixel_code}, access_token: {tiktok.access_token}, base_url: "{tiktok.base}"}}
"""


async def post_leads(base: str, count: int, rate: float) -> dict[str, float]:
    """Post `count` signed leads at `rate` per second; {event id: time its 201 came back}."""
    answered: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
        async def one(n: int) -> None:
            body = json.dumps({"email": f"d{n}@example.com", "consent_marketing": True, "value": 10}).encode()
            headers = {"Host": HOST, "Content-Type": "application/json",
                       "X-Halo-Signature": sign(body, int(time.time()))}
            async with session.post(f"{base}/_halo/webhook/lead", data=body, headers=headers) as resp:
                data = await resp.json()
                if resp.status == 201:
                    answered[f"lead-{data['id']}"] = time.time()

        started = time.monotonic()
        tasks = []
        for n in range(count):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return answered


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="leads per second (default 100)")
    parser.add_argument("--hang", choices=PLATFORMS, default="tiktok", help="the platform that hangs")
    parser.add_argument("--drain-s", type=float, default=60.0, help="how long to wait for the healthy platforms")
    args = parser.parse_args()
    if not 1 <= args.leads <= 20000 or not 1 <= args.rate <= 2000:
        parser.error("--leads must be 1..20000, --rate 1..2000")

    tmp = Path(tempfile.mkdtemp(prefix="halo-bench-delivery-"))
    fakes, runners, arrivals = await start_fakes(args.hang)
    port, metrics_port, upstream_port = free_port(), free_port(), free_port()
    config = tmp / "tenants.yaml"
    config.write_text(tenant_yaml(upstream_port, fakes))
    env = {**os.environ, "HALO_DATA_DIR": str(tmp / "data"), "HALO_SECRET_KEY": secrets.token_hex(32)}
    env.pop("HALO_DATABASE_URL", None)
    proxy = subprocess.Popen([sys.executable, "-m", "halo_proxy", "--log-level", "WARNING", "serve", "--config",
                              str(config), "--host", "127.0.0.1", "--port", str(port), "--metrics-port",
                              str(metrics_port), "--workers", "2"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base)
        print(f"{args.leads} leads at {args.rate:g}/s through 2 workers, {args.hang} hanging", flush=True)
        answered = await post_leads(base, args.leads, args.rate)
        healthy = [p for p in PLATFORMS if p != args.hang]
        end = time.monotonic() + args.drain_s
        while time.monotonic() < end and any(  # noqa: ASYNC110 - polls what the fakes recorded, bounded
                len({k for _, k, _ in arrivals[p]}) < len(answered) for p in healthy):
            await asyncio.sleep(0.2)
    finally:
        fakes[args.hang]._release.set()  # noqa: SLF001 - let the hung requests end
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(60)
        except subprocess.TimeoutExpired:
            proxy.kill()
        for runner in runners:
            await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{len(answered)} leads answered 201; HaloTrack exited {proxy.returncode}")
    print(f"{'platform':<11} {'events':>7} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'duplicates':>10}")
    worst_p99 = 0.0
    total_duplicates = 0
    for name in PLATFORMS:
        seen = Counter(key for _, key, _ in arrivals[name])
        duplicates = sum(n - 1 for n in seen.values())
        total_duplicates += duplicates
        first: dict[str, tuple[float, float | None]] = {}
        for at, key, own in arrivals[name]:
            first.setdefault(key, (at, own))
        delays = [at - (own if own is not None else answered[key]) for key, (at, own) in first.items()
                  if own is not None or key in answered]
        p99 = percentile(delays, 0.99)
        if name != args.hang and delays:
            worst_p99 = max(worst_p99, p99)
        print(f"{name:<11} {len(first):>7} {percentile(delays, 0.5):>7.3f} {p99:>7.3f} "
              f"{max(delays) if delays else float('nan'):>7.3f} {duplicates:>10}")
    met = worst_p99 < 2.0 and total_duplicates == 0
    print(f"healthy platforms' p99 {worst_p99:.3f} s (target < 2 s), duplicates {total_duplicates} (target 0): "
          f"{'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
