"""`halo-proxy`: parse argv, load config, build the app, run. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence

from . import __version__

SERVE_DEFAULTS = {"host": "127.0.0.1", "port": 8080, "metrics_port": 9102, "workers": 1, "watch_config": 0.0}
SERVE_ENV = {"config": "HALO_CONFIG", "host": "HALO_HOST", "port": "HALO_PORT", "metrics_port": "HALO_METRICS_PORT",
             "workers": "HALO_WORKERS", "watch_config": "HALO_WATCH_CONFIG_S"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="halo-proxy", description="HaloTrack attribution reverse proxy.")
    parser.add_argument("--version", action="version", version=f"halo-proxy {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    # serve's options also come from the environment (a container's settings), an option given winning.
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="tenant YAML file (HALO_CONFIG)")
    serve.add_argument("--host", help=f"listen address (HALO_HOST, default {SERVE_DEFAULTS['host']})")
    serve.add_argument("--port", type=int, help=f"proxy port (HALO_PORT, default {SERVE_DEFAULTS['port']})")
    serve.add_argument("--metrics-port", type=int, help="Prometheus /metrics port, 0 disables "
                       f"(HALO_METRICS_PORT, default {SERVE_DEFAULTS['metrics_port']})")
    serve.add_argument("--workers", type=int, help="processes sharing the port, SO_REUSEPORT "
                       f"(HALO_WORKERS, default {SERVE_DEFAULTS['workers']})")
    serve.add_argument("--watch-config", type=float, metavar="SECONDS",
                       help="also reload the tenant file when it changes, looking every SECONDS "
                       "(HALO_WATCH_CONFIG_S; default 0: only on SIGHUP)")

    health = sub.add_parser("healthcheck", help="exit 0 when this host's proxy answers healthz (or readyz)")
    health.add_argument("--config", help="tenant YAML file, for the reserved prefix (HALO_CONFIG)")
    health.add_argument("--host", help="the proxy's listen address (HALO_HOST); 0.0.0.0 and :: probe loopback")
    health.add_argument("--port", type=int, help="the proxy's port (HALO_PORT)")
    health.add_argument("--ready", action="store_true", help="ask readyz instead of healthz")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds before giving up (default 2)")

    check = sub.add_parser("check-config", help="validate the tenant YAML")
    check.add_argument("--config", required=True)

    sub.add_parser("migrate", help="apply database migrations (HALO_DATABASE_URL, else the embedded database)")

    box = sub.add_parser("outbox", help="see pending sends and dead letters, and requeue them")
    box_sub = box.add_subparsers(dest="outbox_command", required=True)
    listing = box_sub.add_parser("list", help="forwards by status, newest first")
    listing.add_argument("--status", default="dead",
                         choices=["pending", "sent", "dead", "skipped", "cancelled", "all"])
    listing.add_argument("--tenant")
    listing.add_argument("--platform", choices=["meta", "ga4", "google_ads", "tiktok"])
    listing.add_argument("--limit", type=int, default=50)
    show = box_sub.add_parser("show", help="one forward in full (never its payload)")
    show.add_argument("id", type=int)
    retry = box_sub.add_parser("retry", help="make dead (or backing-off pending) forwards due now")
    retry.add_argument("ids", type=int, nargs="*", help="forward ids; none: every matching row")
    retry.add_argument("--status", default="dead", choices=["dead", "pending"])
    retry.add_argument("--tenant")
    retry.add_argument("--platform", choices=["meta", "ga4", "google_ads", "tiktok"])

    rotate = sub.add_parser("rotate-keys", help="re-encrypt stored personal data under a new key version")
    rotate.add_argument("--config", required=True)
    rotate.add_argument("--to-version", type=int, required=True, help="the new key version (2-255)")

    purge = sub.add_parser("purge", help="delete what each tenant's retention_days lets go (or count it)")
    purge.add_argument("--config", required=True, help="the tenant YAML")
    purge.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    key = sub.add_parser("hash-key", help="make a new operator key: prints it once, and the tenant YAML line")
    key.add_argument("--name", default="ops", help="the key's name in the tenant file and the audit trail")
    key.add_argument("--scopes", default="report,privacy", help="comma-separated: report, privacy")
    demo = sub.add_parser("demo", help="embedded database, a demo site and the proxy in front of it")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--site-port", type=int, default=9001)
    demo.add_argument("--metrics-port", type=int, default=9102)
    return parser


def _from_env(args: argparse.Namespace) -> str | None:
    """Fill serve's (and healthcheck's) options left out from their variables, then the defaults; the problem,
    if a variable is not a valid value."""
    for name, variable in SERVE_ENV.items():
        if getattr(args, name, False) is not None:
            continue
        text = os.environ.get(variable, "").strip()
        kind = type(SERVE_DEFAULTS.get(name, ""))
        if not text:
            setattr(args, name, SERVE_DEFAULTS.get(name))
            continue
        try:
            setattr(args, name, kind(text))
        except ValueError:
            return f"{variable} must be {'a whole number' if kind is int else 'a number'}, not {text!r}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("serve", "healthcheck"):
        problem = _from_env(args)
        if problem is None and not args.config:
            problem = "--config (or HALO_CONFIG) is required"
        if problem is not None:
            print(f"halo-proxy: {problem}", file=sys.stderr)
            return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "check-config":
        from .server import load_settings

        settings = load_settings(args.config)
        if settings is None:
            return 2
        print(settings.summary())
        return 0
    if args.command == "serve":
        from .server import serve

        if args.workers < 1:
            print("halo-proxy: --workers must be at least 1", file=sys.stderr)
            return 2
        if args.watch_config < 0:
            print("halo-proxy: --watch-config must be 0 (off) or more seconds", file=sys.stderr)
            return 2
        return serve(args.config, args.host, args.port, args.metrics_port, args.workers, args.watch_config)
    if args.command == "healthcheck":
        from .admin import healthcheck

        return healthcheck(args.config, args.host, args.port, ready=args.ready, timeout_s=args.timeout)
    if args.command == "migrate":
        from .admin import migrate

        return migrate()
    if args.command == "outbox":
        from .admin import outbox_command

        return outbox_command(args)
    if args.command == "rotate-keys":
        from .admin import rotate_keys

        if not 2 <= args.to_version <= 255:
            print("halo-proxy: --to-version must be from 2 to 255", file=sys.stderr)
            return 2
        return rotate_keys(args.config, args.to_version)
    if args.command == "purge":
        from .admin import purge

        return purge(args.config, args.dry_run)
    if args.command == "hash-key":
        from .operators import new_key, parse_scopes, yaml_line

        try:
            scopes = parse_scopes(args.scopes)
        except ValueError as err:
            print(f"halo-proxy: --scopes: {err}", file=sys.stderr)
            return 2
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.name):
            print("halo-proxy: --name must be 1-64 letters, digits, '_', '.' or '-'", file=sys.stderr)
            return 2
        key = new_key()
        print(f"key (shown once; give it to the operator, keep it out of the tenant file): {key}")
        print("add under the tenant's api_keys:")
        print("  " + yaml_line(args.name, key, scopes))
        return 0
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.host, args.port, args.site_port, args.metrics_port)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
