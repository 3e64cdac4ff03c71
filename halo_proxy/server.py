"""Process model: one worker in-process, or a supervisor with N workers sharing the port (SO_REUSEPORT).

Signals: SIGHUP reloads the tenant file (a bad file keeps the old config); SIGTERM and SIGINT drain in-flight
requests, then exit 0. With several workers the supervisor forwards signals, restarts a worker that dies,
and serves /metrics aggregated over all workers (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

log = logging.getLogger(__name__)

DRAIN_SECONDS = 30.0


async def run_worker(config_path: str, host: str, port: int, metrics_port: int, *, serve_metrics: bool = True,
                     ready: multiprocessing.synchronize.Event | None = None) -> int:
    from aiohttp import web

    from .app import create_app, create_metrics_app, reload_config
    from .config import ConfigError, load
    from .metrics import Metrics

    try:
        settings = load(config_path)
    except ConfigError as err:
        for line in err.errors:
            print(line, file=sys.stderr)
        return 2
    metrics = Metrics()
    app = create_app(settings, metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=DRAIN_SECONDS)
    await runner.setup()
    runners = [runner]
    try:
        site = web.TCPSite(runner, host, port, reuse_port=True, backlog=2048)
        await site.start()
        if serve_metrics and metrics_port:
            mrunner = web.AppRunner(create_metrics_app(metrics), access_log=None, handle_signals=False)
            await mrunner.setup()
            runners.append(mrunner)
            await web.TCPSite(mrunner, host, metrics_port, reuse_port=False).start()
    except OSError as err:
        print(f"halo-proxy: cannot listen: {err}", file=sys.stderr)
        for r in reversed(runners):
            await r.cleanup()
        return 1

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_config, app)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("halo-proxy pid %d serving %s on http://%s:%d", os.getpid(), settings.summary(), host, port)
    if ready is not None:
        ready.set()
    await stop.wait()
    # Draining is bounded by DRAIN_SECONDS; a repeated SIGTERM must not cut it short mid-response.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    log.info("halo-proxy pid %d draining", os.getpid())
    for r in reversed(runners):
        await r.cleanup()
    return 0


def _worker_entry(config_path: str, host: str, port: int, ready: multiprocessing.synchronize.Event) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop installs its own reload handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; it sends SIGTERM
    code = asyncio.run(run_worker(config_path, host, port, 0, serve_metrics=False, ready=ready))
    sys.exit(code)


def serve(config_path: str, host: str, port: int, metrics_port: int, workers: int) -> int:
    from .config import ConfigError, load

    try:
        settings = load(config_path)  # fail early, before any process starts
    except ConfigError as err:
        for line in err.errors:
            print(line, file=sys.stderr)
        return 2
    del settings
    if workers == 1:
        return asyncio.run(run_worker(config_path, host, port, metrics_port))
    return _supervise(config_path, host, port, metrics_port, workers)


def _supervise(config_path: str, host: str, port: int, metrics_port: int, workers: int) -> int:
    # Multiprocess metrics: every worker writes its samples under this directory. It must be set before
    # prometheus_client is first imported in this process and its children.
    metrics_dir = tempfile.mkdtemp(prefix="halo-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("fork")
    procs: dict[int, multiprocessing.Process] = {}
    # A stop asked for while workers are still starting is remembered, not fatal.
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def start_one() -> multiprocessing.Process | None:
        ready = ctx.Event()
        proc = ctx.Process(target=_worker_entry, args=(config_path, host, port, ready), daemon=False)
        proc.start()
        deadline = time.monotonic() + 30
        while not ready.wait(0.1):
            if not proc.is_alive() or time.monotonic() > deadline:
                proc.join(1)
                return None
        procs[proc.pid] = proc
        return proc

    for _ in range(workers):
        if stopping.is_set():
            break
        if start_one() is None:
            print("halo-proxy: a worker failed to start; stopping", file=sys.stderr)
            for proc in procs.values():
                proc.terminate()
                proc.join(DRAIN_SECONDS)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            return 1
    try:
        return asyncio.run(_supervisor_loop(procs, start_one, host, metrics_port, stopping))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _supervisor_loop(procs: dict, start_one, host: str, metrics_port: int,  # type: ignore[no-untyped-def]
                           stopping: threading.Event) -> int:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client import multiprocess as prom_mp

    async def handle_metrics(request: web.Request) -> web.Response:
        registry = CollectorRegistry()
        prom_mp.MultiProcessCollector(registry)
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    runner = None
    if metrics_port:
        app = web.Application()
        app.router.add_get("/metrics", handle_metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, metrics_port).start()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def forward(sig: int) -> None:
        for proc in list(procs.values()):
            if proc.is_alive():
                os.kill(proc.pid, sig)

    loop.add_signal_handler(signal.SIGHUP, forward, signal.SIGHUP)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if stopping.is_set():
        stop.set()
    log.info("halo-proxy supervisor pid %d with %d workers", os.getpid(), len(procs))
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except TimeoutError:
            pass
        else:
            break
        for pid, proc in list(procs.items()):
            if not proc.is_alive() and not stop.is_set():
                log.error("worker %d exited with %s; starting a new one", pid, proc.exitcode)
                del procs[pid]
                prom_mp.mark_process_dead(pid)
                await asyncio.to_thread(start_one)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    forward(signal.SIGTERM)
    for proc in list(procs.values()):
        await asyncio.to_thread(proc.join, DRAIN_SECONDS + 5)
        if proc.is_alive():
            proc.kill()
    if runner is not None:
        await runner.cleanup()
    return 0
