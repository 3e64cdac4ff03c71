"""`halo-proxy demo`: a bundled demo shop, HaloTrack in front of it, and the URLs to open."""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path

from aiohttp import web

DEMO_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} - Acme demo shop</title>
<style>body{{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}}
nav a{{margin-right:1rem}} form{{display:grid;gap:.5rem;max-width:20rem}}</style></head>
<body><nav><a href="/">Home</a><a href="/products">Products</a><a href="/contact">Contact</a></nav>
<h1>{title}</h1>{body}</body></html>"""


def create_demo_site() -> web.Application:
    """A tiny client site: pages, a contact form posting to HaloTrack, a cookie, a redirect."""

    async def home(request: web.Request) -> web.Response:
        body = (
            "<p>Welcome to the Acme demo shop, served through HaloTrack.</p>"
            "<p>Arrive as if from an ad:</p><ul>"
            '<li><a href="/?utm_source=google&utm_medium=cpc&utm_campaign=summer&gclid=demo-gclid">Google Ads</a></li>'
            '<li><a href="/?utm_source=facebook&utm_medium=social&fbclid=demo-fbclid">Facebook</a></li>'
            '<li><a href="/?utm_source=newsletter&utm_medium=email">Newsletter</a></li></ul>'
        )
        return web.Response(text=DEMO_PAGE.format(title="Home", body=body), content_type="text/html")

    async def products(request: web.Request) -> web.Response:
        body = "<ul><li>Anvil - 1 200 CZK</li><li>Rocket skates - 5 400 CZK</li></ul>"
        return web.Response(text=DEMO_PAGE.format(title="Products", body=body), content_type="text/html")

    async def contact(request: web.Request) -> web.Response:
        body = (
            '<form method="post" action="/_halo/webhook/lead">'
            '<input type="hidden" name="_redirect" value="/thanks">'
            '<input type="hidden" name="form_type" value="contact">'
            '<label>Email <input name="email" type="email" required></label>'
            '<label>Phone <input name="phone"></label>'
            '<label>Message <textarea name="message"></textarea></label>'
            '<button type="submit">Send</button></form>'
        )
        return web.Response(text=DEMO_PAGE.format(title="Contact", body=body), content_type="text/html")

    async def thanks(request: web.Request) -> web.Response:
        return web.Response(text=DEMO_PAGE.format(title="Thank you", body="<p>We will be in touch.</p>"),
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/", home)
    app.router.add_get("/products", products)
    app.router.add_get("/contact", contact)
    app.router.add_get("/thanks", thanks)
    return app


def demo_config(site_port: int, webhook_secret: str) -> str:
    return f"""# Written by `halo-proxy demo`; edit config/tenants.yaml for real tenants.
server:
  stop: {{drain_s: 0}}  # no load balancer in front of the demo: Ctrl+C stops at once
tenants:
  - id: demo
    hosts: [localhost, "*.localhost", 127.0.0.1]
    upstream: http://127.0.0.1:{site_port}
    currency: CZK
    default_phone_region: CZ
    webhook_secret: {webhook_secret}
"""


def demo_webhook_secret(data_dir: Path) -> str:
    """The demo tenant's webhook secret: made once under HALO_DATA_DIR, so signed examples keep working."""
    path = data_dir / "demo-webhook.secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(16) + "\n")
    return path.read_text().strip()


class Banner:
    """Printed once the proxy listens (run_worker calls `set()` then), not before: the URLs work when read."""

    def __init__(self, lines: list[str]):
        self.lines = lines

    def set(self) -> None:
        print("\n".join(self.lines), flush=True)


def run_demo(host: str, port: int, site_port: int, metrics_port: int) -> int:
    from .server import run_worker

    data_dir = Path(os.environ.get("HALO_DATA_DIR", ".halo"))
    data_dir.mkdir(parents=True, exist_ok=True)
    # One file per proxy port: a second demo (on other ports) never rewrites the file a running one reloads.
    config_path = data_dir / f"demo-tenants-{port}.yaml"
    secret = demo_webhook_secret(data_dir)

    try:  # a proxy port in use fails before the tenant file is written (it may be another demo's)
        socket.create_server((host, port)).close()
    except OSError as err:
        print(f"halo-proxy demo: cannot listen on {host}:{port}: {err.strerror or err} (is another demo "
              "running? `make run ARGS='--port 8180 --site-port 9101 --metrics-port 9202'`)", file=sys.stderr)
        return 1

    async def main() -> int:
        site_runner = web.AppRunner(create_demo_site(), access_log=None, handle_signals=False)
        await site_runner.setup()
        try:
            await web.TCPSite(site_runner, "127.0.0.1", site_port).start()
        except OSError as err:
            print(f"halo-proxy demo: cannot start the demo site on port {site_port}: {err.strerror or err} "
                  "(is another demo running? `make run ARGS='--port 8180 --site-port 9101 --metrics-port 9202'`)",
                  file=sys.stderr)
            await site_runner.cleanup()
            return 1
        config_path.write_text(demo_config(site_port, secret), encoding="utf-8")
        lines = [
            f"Demo site (direct):     http://127.0.0.1:{site_port}/",
            f"Through HaloTrack:      http://localhost:{port}/",
            f"  from a Google ad:     http://localhost:{port}/?utm_source=google&utm_medium=cpc&gclid=demo",
            f"  health:               http://localhost:{port}/_halo/healthz",
        ]
        if metrics_port:
            lines.append(f"Metrics:                http://{host}:{metrics_port}/metrics")
        lines += [
            f"Tenant file:            {config_path}",
            f"Webhook secret:         {secret}   (tenant demo, Host: localhost; see README, Leads and orders)",
            "Press Ctrl+C to stop.",
        ]
        try:
            return await run_worker(str(config_path), host, port, metrics_port, generate_secret=True,
                                    ready=Banner(lines))  # type: ignore[arg-type]
        finally:
            await site_runner.cleanup()

    from .server import run_loop

    return run_loop(main())
