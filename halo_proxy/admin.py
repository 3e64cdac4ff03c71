"""Operator commands that run once against the database and exit: `migrate`, `rotate-keys`, `outbox`.

Each opens HALO_DATABASE_URL (or the embedded PostgreSQL under HALO_DATA_DIR), does its job, prints what it did
and returns the process exit code. The serving process model is `server.py`'s.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC

from .server import StartupError, database_settings, load_keys, load_settings, open_database


def with_database(job, failure: str):  # type: ignore[no-untyped-def]
    """Run `job(pool)` for an operator command against HALO_DATABASE_URL or the embedded database.

    Returns (result, None) or (None, exit code) after printing the problem: 2 when the database cannot be
    opened, 1 when the job fails on it. The embedded server, if started here, is stopped afterwards.
    """
    from .storage.db import create_pool
    from .storage.errors import StorageError

    try:
        cache = database_settings().statement_cache_size
        dsn, embedded = open_database()
    except StartupError as err:
        print(f"halo-proxy: {err}", file=sys.stderr)
        return None, 2

    async def run():  # type: ignore[no-untyped-def]
        pool = await create_pool(dsn, min_size=1, max_size=2, statement_cache_size=cache)
        try:
            return await job(pool)
        finally:
            await pool.close()

    try:
        return asyncio.run(run()), None
    except StorageError as err:
        print(f"halo-proxy: {failure}: {err}", file=sys.stderr)
        return None, 1
    finally:
        if embedded is not None:
            embedded.stop()


def migrate() -> int:
    """`halo-proxy migrate`: apply pending migrations and say which."""
    from .storage import migrations

    applied, code = with_database(migrations.apply, "migrations failed")
    if code is not None:
        return code
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "database is up to date")
    return 0


def rotate_keys(config_path: str, to_version: int) -> int:
    """`halo-proxy rotate-keys`: rewrite every tenant's stored personal data under key version `to_version`
    (HALO_SECRET_KEY is its secret; older versions' secrets in HALO_PREVIOUS_SECRET_KEYS): ciphertexts
    re-encrypted, blind indexes and IP hashes re-keyed.

    Rows already at that version are left alone, so an interrupted run can simply be started again. Old rows
    stay readable throughout: a ring decrypts every version up to its current one. Before anything is
    written, one stored value of each older version must decrypt.
    """
    from .services.rotation import UnreadableKeyVersion, check_readable, rotate

    settings = load_settings(config_path)
    if settings is None:
        return 2
    os.environ["HALO_KEY_VERSION"] = str(to_version)
    try:
        keys = load_keys(generate=False)
    except StartupError as err:
        print(f"halo-proxy: {err}", file=sys.stderr)
        return 2

    async def job(pool) -> dict[str, dict[str, int]] | str:  # type: ignore[no-untyped-def]
        try:
            await check_readable(pool, keys, settings.tenants)
        except UnreadableKeyVersion as err:
            return str(err)
        return await rotate(pool, keys, settings.tenants)

    done, code = with_database(job, "key rotation failed")
    if code is not None:
        return code
    if isinstance(done, str):
        print(f"halo-proxy: {done}; nothing was changed", file=sys.stderr)
        return 2
    for tenant_id, counts in done.items():
        print(f"{tenant_id}: " + ", ".join(f"{n} {table}" for table, n in counts.items()) +
              f" rewritten under key version {to_version}")
    days = max((t.cookie.max_age_days for t in settings.tenants), default=0)
    print(f"Now run every proxy with HALO_KEY_VERSION={to_version}. Keep the older secrets in "
          f"HALO_PREVIOUS_SECRET_KEYS for one cookie lifetime ({days} days): visitors' cookies sealed under them "
          "are re-sealed under the new key as they return; then remove them.")
    return 0


def outbox_command(args) -> int:  # type: ignore[no-untyped-def]
    """`halo-proxy outbox list|show|retry`."""
    from .storage import outbox

    async def job(pool) -> int:  # type: ignore[no-untyped-def]
        if args.outbox_command == "list":
            status = None if args.status == "all" else args.status
            rows = await outbox.list_forwards(pool, status, args.tenant, args.limit, platform=args.platform)
            print(f"{'id':>8}  {'tenant':<12} {'platform':<10} {'status':<9} {'tries':>5}  "
                  f"{'next attempt':<20} {'reason':<22} event id")
            for r in rows:
                print(f"{r.id:>8}  {r.tenant_id:<12} {r.platform:<10} {r.status:<9} {r.attempts:>5}  "
                      f"{r.next_attempt_at:%Y-%m-%d %H:%M:%S}  {(r.reason or '-'):<22} {r.event_id}")
            print(f"{len(rows)} row(s)")
            return 0
        if args.outbox_command == "show":
            row = await outbox.get_forward(pool, args.id)
            if row is None:
                print(f"halo-proxy: no forward with id {args.id}", file=sys.stderr)
                return 1
            for name in ("id", "tenant_id", "conversion_id", "platform", "event_id", "status", "reason",
                         "attempts", "next_attempt_at", "locked_until", "locked_by", "last_error",
                         "created_at", "sent_at", "updated_at", "send_started_at"):
                print(f"{name:>16}: {getattr(row, name)}")
            payload = f"encrypted, {len(row.payload_enc)} bytes" if row.payload_enc else "none"
            print(f"{'payload':>16}: {payload}")
            attempts = await outbox.attempts_for(pool, [row.id])
            print(f"\nledger ({len(attempts)} attempt(s)):")
            print(f"  {'#':>3}  {'at (UTC)':<19}  {'outcome':<11} {'reason':<18} {'http':>4}  {'consent':<8} detail")
            for a in attempts:
                consent = {True: "granted", False: "denied", None: "-"}[a.consent_marketing]
                print(f"  {a.attempt:>3}  {a.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}  {a.outcome:<11} "
                      f"{(a.reason or '-'):<18} {a.http_status or '-':>4}  {consent:<8} {a.detail or ''}")
            return 0
        count = await outbox.requeue(pool, args.tenant, ids=args.ids or None, status=args.status,
                                     platform=args.platform)
        print(f"requeued {count} forward(s); running proxies send them within a second")
        return 0

    result, code = with_database(job, "the outbox could not be read (has `halo-proxy migrate` run?)")
    return code if code is not None else result


def purge(config_path: str, dry_run: bool) -> int:
    """`halo-proxy purge`: apply every tenant's retention_days now (or, with --dry-run, count what would go)."""
    from datetime import UTC, datetime

    from .services.retention import Retention

    settings = load_settings(config_path)
    if settings is None:
        return 2

    async def job(pool):  # type: ignore[no-untyped-def]
        return await Retention(pool, lambda: datetime.now(UTC)).purge(settings.tenants, dry_run=dry_run)

    found, code = with_database(job, "the purge failed")
    if code is not None:
        return code
    if found is None:
        print("halo-proxy: another process is purging now (its advisory lock is held); try again later",
              file=sys.stderr)
        return 1
    verb = "would delete" if dry_run else "deleted"
    for tenant_id, counts in found.items():
        print(f"{tenant_id}: {verb} " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return 0


def healthcheck(config_path: str, host: str, port: int, *, ready: bool = False, timeout_s: float = 2.0) -> int:
    """`halo-proxy healthcheck`: GET healthz (or readyz) under the tenant file's reserved prefix on this host's
    proxy; 0 when it answers 200, else 1 with the reason (a container's HEALTHCHECK, a probe's exec)."""
    import urllib.error
    import urllib.request

    settings = load_settings(config_path)
    if settings is None:
        return 2
    probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    netloc = f"[{probe_host}]" if ":" in probe_host else probe_host
    url = f"http://{netloc}:{port}{settings.server.reserved_prefix}/{'readyz' if ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - a fixed http URL
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        print(f"halo-proxy: {url}: {reason}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"halo-proxy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0
