"""Process model: one worker in-process, or a supervisor with N workers sharing the port (SO_REUSEPORT among
themselves only: a second proxy on the same port fails with a clear message).

Signals: SIGHUP reloads the tenant file (a bad file keeps the old config; with `watch_s` a change of the file
sends it too); SIGTERM and SIGINT stop within
`server.stop.timeout_s`: readyz answers 503 for `server.stop.drain_s`, the listener closes, requests in flight and
the sends in flight finish; exit 0, or 3 when forwards had to be released unsent (another process sends them). With several workers the supervisor forwards signals, restarts a worker that dies,
and serves /metrics aggregated over all workers (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time: prometheus_client must not be imported before the workers fork
    from .storage.outbox import ForwardRow

log = logging.getLogger(__name__)

DRAIN_SECONDS = 30.0  # a worker that has not started yet is given this long to stop
FLUSH_SECONDS = 5.0
EXIT_ABANDONED = 3  # the stop had to leave work undone (forwards released unsent)
SECRET_FILE = "secret.key"


def run_loop(coro):  # type: ignore[no-untyped-def]
    """Run the proxy's event loop: uvloop (libuv) when installed, else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


class StartupError(Exception):
    """The process cannot start; the message tells the operator what to fix."""


def load_settings(config_path: str):  # type: ignore[no-untyped-def]
    """The tenant file's settings, or None after printing every error (`PATH:tenant[ID].field: message`)."""
    from .config import ConfigError, load

    try:
        return load(config_path)
    except ConfigError as err:
        for line in err.errors:
            print(line, file=sys.stderr)
        return None


def data_dir(environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("HALO_DATA_DIR") or ".halo"


def secret_env(name: str) -> str:
    """A secret from the environment: `NAME` when set, else the contents of the file `NAME_FILE` names (a mounted
    Docker or Kubernetes secret), stripped; "" when neither is set."""
    value = os.environ.get(name, "")
    path = os.environ.get(f"{name}_FILE", "")
    if value or not path:
        return value
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise StartupError(f"{name}_FILE={path} cannot be read: {reason}") from err


def load_keys(*, generate: bool):  # type: ignore[no-untyped-def]
    """The key ring from HALO_SECRET_KEY (version HALO_KEY_VERSION) and HALO_PREVIOUS_SECRET_KEYS, each also from
    a file (`secret_env`). Unset: `demo` generates one once under HALO_DATA_DIR; `serve` refuses."""
    from pathlib import Path

    from .crypto import (
        CryptoError,
        KeyRing,
        generate_master_secret,
        parse_master_secret,
        parse_previous_secrets,
    )

    text = secret_env("HALO_SECRET_KEY")
    if not text and generate:
        path = Path(data_dir()) / SECRET_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(generate_master_secret() + "\n")
        text = path.read_text().strip()
    if not text:
        raise StartupError(
            "HALO_SECRET_KEY is not set (nor HALO_SECRET_KEY_FILE). Set it to at least 32 random bytes, hex or "
            "base64, for example:\n"
            "  export HALO_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')\n"
            "Keep it safe: cookies, IP hashes and encrypted personal data depend on it.")
    version_text = os.environ.get("HALO_KEY_VERSION", "1")
    try:
        version = int(version_text)
    except ValueError:
        raise StartupError(f"HALO_KEY_VERSION must be a whole number from 1 to 255, not {version_text!r}") from None
    try:
        master = parse_master_secret(text)
        ring = KeyRing(master, current_version=version)
    except CryptoError as err:
        raise StartupError(f"HALO_SECRET_KEY or HALO_KEY_VERSION is invalid: {err}") from err
    try:
        previous = parse_previous_secrets(secret_env("HALO_PREVIOUS_SECRET_KEYS"), version)
    except CryptoError as err:
        raise StartupError(f"HALO_PREVIOUS_SECRET_KEYS is invalid: {err}") from err
    return KeyRing(master, current_version=version, previous=previous) if previous else ring


def database_settings():  # type: ignore[no-untyped-def]
    """HALO_DATABASE_POOL_SIZE and HALO_DATABASE_STATEMENT_CACHE, checked (StartupError naming the variable)."""
    from .config import ConfigError
    from .config import database_settings as read

    try:
        return read(os.environ)
    except ConfigError as err:
        raise StartupError("; ".join(err.errors)) from err


def open_database():  # type: ignore[no-untyped-def]
    """(DSN, embedded server or None). HALO_DATABASE_URL (or HALO_DATABASE_URL_FILE) wins; else an embedded
    PostgreSQL under HALO_DATA_DIR."""
    dsn = secret_env("HALO_DATABASE_URL")
    if dsn:
        return dsn, None
    from .storage.embedded import EmbeddedPostgres
    from .storage.errors import StorageError

    server = EmbeddedPostgres.from_env()
    try:
        return server.start(), server
    except StorageError as err:
        raise StartupError(f"the embedded PostgreSQL under {server.data_dir} did not start: {err}") from err


async def run_worker(config_path: str, host: str, port: int, metrics_port: int, *, serve_metrics: bool = True,
                     ready: multiprocessing.synchronize.Event | None = None, generate_secret: bool = False,
                     sock: socket.socket | None = None, watch_s: float = 0.0) -> int:
    """One proxy process. It binds `host:port` itself (no SO_REUSEPORT: a second proxy on the same port fails
    with a clear message), or serves `sock`, the listening socket its supervisor bound for all its workers."""

    from .app import create_app
    from .metrics import Metrics

    settings = load_settings(config_path)
    if settings is None:
        return 2
    try:
        keys = load_keys(generate=generate_secret)
        database = database_settings()
        dsn, embedded = await asyncio.to_thread(open_database)
    except StartupError as err:
        print(f"halo-proxy: {err}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings, Metrics(), keys=keys, dsn=dsn, database=database)
        return await _serve_app(app, settings, host, port, metrics_port, serve_metrics, ready, sock, watch_s)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _serve_app(app, settings, host: str, port: int, metrics_port: int,  # type: ignore[no-untyped-def]
                     serve_metrics: bool, ready: multiprocessing.synchronize.Event | None,
                     sock: socket.socket | None = None, watch_s: float = 0.0) -> int:
    from aiohttp import web

    from .app import METRICS, STOPPING, WORKER, create_metrics_app, reload_config
    from .edge.connections import ListenerRunner, self_check
    from .services.rotation import UnreadableKeyVersion

    self_check()
    metrics = app[METRICS]
    stop_cfg = settings.server.stop
    runner = ListenerRunner(app, client=settings.server.client, metrics=metrics, access_log=None,
                            handle_signals=False, shutdown_timeout=request_drain_s(stop_cfg))
    try:
        await runner.setup()
    except UnreadableKeyVersion as err:
        print(f"halo-proxy: {err}", file=sys.stderr)
        await runner.cleanup()
        return 2
    runners = [runner]
    try:
        site = (web.SockSite(runner, sock) if sock is not None
                else web.TCPSite(runner, host, port, reuse_port=False, backlog=2048))
        await site.start()
        if serve_metrics and metrics_port:
            mrunner = web.AppRunner(create_metrics_app(metrics), access_log=None, handle_signals=False)
            await mrunner.setup()
            runners.append(mrunner)
            await web.TCPSite(mrunner, host, metrics_port, reuse_port=False).start()
    except OSError as err:
        print(f"halo-proxy: cannot listen on {host}:{port} or its metrics port {metrics_port}: {err.strerror or err}"
              " (is another halo-proxy or server already using it?)", file=sys.stderr)
        for r in reversed(runners):
            await r.cleanup()
        return 1

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_config, app)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    watcher = (asyncio.create_task(watch_config(settings.path, watch_s, lambda: os.kill(os.getpid(), signal.SIGHUP)),
                                   name="halo-config-watch") if watch_s else None)
    log.info("halo-proxy pid %d serving %s on http://%s:%d", os.getpid(), settings.summary(), host, port)
    if ready is not None:
        ready.set()
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    # The stop is bounded by server.stop.timeout_s; a repeated SIGTERM must not cut it short mid-response.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    stopping = app[STOPPING]
    stopping.deadline = loop.time() + stop_cfg.timeout_s
    stopping.draining = True  # readyz: 503 from now on, while the listener still accepts
    worker = app.get(WORKER)
    if worker is not None:
        worker.stop_claiming()  # the sends in flight have the whole stop to finish; no new one begins
    log.info("halo-proxy pid %d stopping: readyz 503 for %.1f s, then the listener closes", os.getpid(),
             stop_cfg.drain_s)
    if stop_cfg.drain_s:
        await asyncio.sleep(stop_cfg.drain_s)
    transports = [conn.transport for conn in (runner.server.connections if runner.server is not None else ())
                  if conn.transport is not None]
    for r in reversed(runners):
        await r.cleanup()  # listener closed, requests in flight finished, then the cleanup contexts
    # A finished response may still sit in a socket's write buffer; closing the loop now would cut it short.
    await _flushed(transports, min(FLUSH_SECONDS, stopping.remaining(FLUSH_SECONDS) or FLUSH_SECONDS))
    if stopping.abandoned:
        log.error("halo-proxy pid %d stopped with %d send(s) cut off mid-way (released for another process)",
                  os.getpid(), stopping.abandoned)
        return EXIT_ABANDONED
    return 0


def _file_stamp(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a Kubernetes ConfigMap volume swaps the one its files go through
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


async def watch_config(path: str, every_s: float, changed) -> None:  # type: ignore[no-untyped-def]
    """Call `changed()` (which sends SIGHUP) each time the tenant file is rewritten or replaced, looking every
    `every_s` seconds. A file caught half-written fails its reload and keeps the old config; the write's end
    changes the file again, and the next look reloads it."""
    last = _file_stamp(path)
    while True:
        await asyncio.sleep(every_s)
        now = _file_stamp(path)
        if now != last and now is not None:
            log.info("%s changed; reloading it", path)
            changed()
        last = now


def request_drain_s(stop) -> float:  # type: ignore[no-untyped-def]
    """How long requests in flight may take to finish once the listener closed: what the stop's limit leaves
    after the drain delay, less a share kept for the delivery worker's stop."""
    left = stop.timeout_s - stop.drain_s
    return max(left - min(10.0, left / 3), 0.5)


def _pending_bytes(transport: asyncio.BaseTransport) -> int:
    try:
        return transport.get_write_buffer_size()  # type: ignore[attr-defined]
    except (RuntimeError, AttributeError, OSError):  # already closed and released
        return 0


async def _flushed(transports: list[asyncio.BaseTransport], seconds: float) -> None:
    """Wait (bounded) until every connection open at shutdown has handed its last bytes to the kernel."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while any(_pending_bytes(t) for t in transports) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


def _exit_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this worker if its supervisor dies, so no worker is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still stops its workers
        pass


def _worker_entry(config_path: str, host: str, port: int, ready: multiprocessing.synchronize.Event,
                  sock: socket.socket) -> None:
    _exit_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop installs its own reload handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; it sends SIGTERM
    code = run_loop(run_worker(config_path, host, port, 0, serve_metrics=False, ready=ready, sock=sock))
    # The worker has stopped in order; leave now with its code. A worker the supervisor restarted was forked from
    # one of the supervisor's threads, and the interpreter's own shutdown of such a child (threading._shutdown)
    # fails, which multiprocessing reports as exit code 1 with no word why.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(config_path: str, host: str, port: int, metrics_port: int, workers: int, watch_s: float = 0.0) -> int:
    """`halo-proxy serve`. `watch_s` > 0: the tenant file is also reloaded when it changes (looked at every
    `watch_s` seconds), as on SIGHUP."""
    settings = load_settings(config_path)
    if settings is None:  # fail early, before any process starts
        return 2
    if workers == 1:
        return run_loop(run_worker(config_path, host, port, metrics_port, watch_s=watch_s))
    try:
        load_keys(generate=False)  # refuse early, before any worker starts
        database_settings()
        dsn, embedded = open_database()  # one server for all workers, stopped after the last one exits
    except StartupError as err:
        print(f"halo-proxy: {err}", file=sys.stderr)
        return 2
    os.environ["HALO_DATABASE_URL"] = dsn
    try:
        try:
            socks = listening_sockets(host, port, workers)
        except OSError as err:
            print(f"halo-proxy: cannot listen on {host}:{port}: {err.strerror or err}"
                  " (is another halo-proxy or server already using it?)", file=sys.stderr)
            return 1
        try:
            # The stop limit the workers start with (a reload does not change a stop already promised).
            return _supervise(config_path, host, port, metrics_port, workers, socks, settings.server.stop.timeout_s,
                              watch_s)
        finally:
            for sock in socks:
                sock.close()
    finally:
        if embedded is not None:
            embedded.stop()


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` SO_REUSEPORT sockets on `host:port`, one per worker, so the kernel spreads connections among them.

    The port is first bound once without SO_REUSEPORT: that fails when any other process listens there
    (another halo-proxy included), so SO_REUSEPORT is shared only among this supervisor's workers. The sockets
    are bound here, before any worker starts, and a restarted worker takes over its predecessor's socket,
    whose queued connections wait for it instead of being refused.
    """
    probe = socket.create_server((host, port))
    probe.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_server((host, port), backlog=2048, reuse_port=True)
            sock.set_inheritable(True)
            socks.append(sock)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _supervise(config_path: str, host: str, port: int, metrics_port: int, workers: int,
               socks: list[socket.socket], stop_timeout_s: float, watch_s: float = 0.0) -> int:
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

    def start_one(slot: int) -> multiprocessing.Process | None:
        ready = ctx.Event()
        proc = ctx.Process(target=_worker_entry, args=(config_path, host, port, ready, socks[slot]), daemon=False)
        proc.slot = slot  # type: ignore[attr-defined]
        proc.start()
        deadline = time.monotonic() + 30
        while not ready.wait(0.1):
            if not proc.is_alive() or time.monotonic() > deadline:
                proc.join(1)
                return None
        procs[proc.pid] = proc
        return proc

    for slot in range(workers):
        if stopping.is_set():
            break
        if start_one(slot) is None:
            print("halo-proxy: a worker failed to start; stopping", file=sys.stderr)
            for proc in procs.values():
                proc.terminate()
                proc.join(DRAIN_SECONDS)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            return 1
    try:
        return asyncio.run(_supervisor_loop(procs, start_one, host, metrics_port, stopping, stop_timeout_s,
                                            config_path, watch_s))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _supervisor_loop(procs: dict, start_one, host: str, metrics_port: int,  # type: ignore[no-untyped-def]
                           stopping: threading.Event, stop_timeout_s: float, config_path: str = "",
                           watch_s: float = 0.0) -> int:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client import multiprocess as prom_mp

    async def handle_metrics(request: web.Request) -> web.Response:
        registry = CollectorRegistry()
        prom_mp.MultiProcessCollector(registry)
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    from prometheus_client import Counter

    from .forwarders.worker import RELEASED_HELP

    # The supervisor's own samples, in the same multiprocess directory as the workers' (registry=None: they are
    # read from there, like every worker's).
    restarts = Counter("halo_worker_restarts_total",
                       "Workers that died while serving; the supervisor starts a new one in each one's place.",
                       registry=None)
    released_after_death = Counter("halo_forwards_released_total", RELEASED_HELP, ["platform"], registry=None)

    async def release(pid: int) -> None:
        for row in await release_dead_worker(pid):
            released_after_death.labels(platform=row.platform).inc()

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
    watcher = (asyncio.create_task(watch_config(config_path, watch_s, lambda: forward(signal.SIGHUP)),
                                   name="halo-config-watch") if watch_s else None)
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
                restarts.inc()
                await release(pid)
                if await asyncio.to_thread(start_one, proc.slot) is None:
                    log.error("the worker in place of %d did not start; serving with %d worker(s)", pid, len(procs))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    if watcher is not None:
        watcher.cancel()
    forward(signal.SIGTERM)
    limit = stop_timeout_s + 5
    deadline = time.monotonic() + limit
    code = 0
    for pid, proc in list(procs.items()):
        await asyncio.to_thread(proc.join, max(deadline - time.monotonic(), 0.1))
        if proc.is_alive():
            log.error("worker %d did not stop within %.0f s; killed", pid, limit)
            proc.kill()
            await asyncio.to_thread(proc.join, 5)
            await release(pid)
            code = EXIT_ABANDONED
        elif proc.exitcode:
            log.warning("worker %d stopped with exit code %s", pid, proc.exitcode)
            if proc.exitcode != EXIT_ABANDONED:  # it crashed while stopping
                await release(pid)
            code = max(code, EXIT_ABANDONED if proc.exitcode == EXIT_ABANDONED else 1)
    if runner is not None:
        await runner.cleanup()
    return code


async def release_dead_worker(pid: int) -> list[ForwardRow]:
    """A worker died: give its leased forwards back at once rather than when their lease runs out. Returns the
    rows released (none when the database could not be reached: their leases then run out on their own)."""
    import asyncpg

    from .storage import outbox

    dsn = os.environ.get("HALO_DATABASE_URL")
    if not dsn:
        return []
    host = socket.gethostname()
    try:
        conn = await asyncpg.connect(dsn, timeout=5,
                                     statement_cache_size=database_settings().statement_cache_size)
        try:
            released = await outbox.release_process(conn, host, pid, datetime.now(UTC), ledger=outbox.Release(
                "worker_died", cut="the worker died during its send", clean="the worker died before sending it",
                worker=f"{host}:{pid}"))
        finally:
            await conn.close()
    except Exception as err:  # noqa: BLE001 - the leases then run out on their own
        log.warning("could not release the forwards of worker %d (%s)", pid, type(err).__name__)
        return []
    if released:
        cut = sum(1 for r in released if r.in_doubt)
        log.warning("released %d forward(s) leased by worker %d (%d cut off mid-send)", len(released), pid, cut)
    return released
