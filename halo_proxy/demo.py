"""`halo-proxy demo`: a bundled demo shop, HaloTrack in front of it, and the URLs to open."""

from __future__ import annotations

import os
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


def demo_config(site_port: int) -> str:
    return f"""# Written by `halo-proxy demo`; edit config/tenants.yaml for real tenants.
tenants:
  - id: demo
    hosts: [localhost, "*.localhost", 127.0.0.1]
    upstream: http://127.0.0.1:{site_port}
    currency: CZK
    default_phone_region: CZ
"""


def run_demo(host: str, port: int, site_port: int, metrics_port: int) -> int:
    from .server import run_worker

    data_dir = Path(os.environ.get("HALO_DATA_DIR", ".halo"))
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "demo-tenants.yaml"
    config_path.write_text(demo_config(site_port), encoding="utf-8")

    async def main() -> int:
        site_runner = web.AppRunner(create_demo_site(), access_log=None, handle_signals=False)
        await site_runner.setup()
        try:
            await web.TCPSite(site_runner, "127.0.0.1", site_port).start()
        except OSError as err:
            print(f"halo-proxy demo: cannot start the demo site on port {site_port}: {err}", file=sys.stderr)
            await site_runner.cleanup()
            return 1
        print(f"Demo site (direct):     http://127.0.0.1:{site_port}/", flush=True)
        print(f"Through HaloTrack:      http://localhost:{port}/", flush=True)
        print(f"  from a Google ad:     http://localhost:{port}/?utm_source=google&utm_medium=cpc&gclid=demo", flush=True)
        print(f"  health:               http://localhost:{port}/_halo/healthz", flush=True)
        if metrics_port:
            print(f"Metrics:                http://{host}:{metrics_port}/metrics", flush=True)
        print("Press Ctrl+C to stop.", flush=True)
        try:
            return await run_worker(str(config_path), host, port, metrics_port, generate_secret=True)
        finally:
            await site_runner.cleanup()

    from .server import run_loop

    return run_loop(main())
