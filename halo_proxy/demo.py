"""`halo-proxy demo`: a bundled demo shop, HaloTrack in front of it, and the URLs to open."""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path

from aiohttp import web

from .operators import key_digest, new_key

# HaloTrack's queue stub: page code may call these before the async t.js has loaded; t.js replays `q`.
QUEUE_STUB = (
    'window.HaloTrack=window.HaloTrack||{q:[]};["identify","track","consent"].forEach(function(m){'
    "window.HaloTrack[m]=window.HaloTrack[m]||"
    "function(){window.HaloTrack.q.push([m,[].slice.call(arguments)])}});"
)

# A CookieYes look-alike, so t.js meets the real CMP's cookie, events and API: the `cookieyes-consent`
# cookie (absent until a choice; the consent id is base64 of 32 letters and digits, unpadded, so URL-safe as
# CookieYes writes it), `cookieyes_banner_load` once per page, `cookieyes_consent_update` after each choice
# (cookie written first), and `window.getCkyConsent()`.
CONSENT_BANNER = (
    '<div id="cky-banner" role="dialog" aria-label="Cookie consent" hidden>'
    "<p>We use cookies to see which ads bring visitors. "
    "Analytics and advertising cookies are used only if you accept them.</p>"
    '<button id="cky-accept" type="button">Accept all</button> '
    '<button id="cky-reject" type="button">Reject all</button></div>'
    '<button id="cky-settings" type="button">Cookie settings</button>'
)
CONSENT_SCRIPT = """(() => {
  const SLUGS = ["necessary", "functional", "analytics", "performance", "advertisement"];
  const banner = document.getElementById("cky-banner");
  const fields = {};
  const found = document.cookie.match(/(?:^|;\\s*)cookieyes-consent=([^;]*)/);
  if (found) {
    let raw = found[1];
    try { raw = decodeURIComponent(raw); } catch (err) { /* keep it as sent */ }
    raw.split(",").forEach((item) => {
      const at = item.indexOf(":");
      if (at > 0) fields[item.slice(0, at).trim()] = item.slice(at + 1).trim();
    });
  }
  const newId = () => {
    const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const bytes = crypto.getRandomValues(new Uint8Array(32));
    return btoa(Array.from(bytes, (b) => abc[b % abc.length]).join("")).replace(/=+$/, "");
  };
  const state = {consentID: fields.consentid || newId(), done: fields.action === "yes", categories: {}};
  SLUGS.forEach((s) => { state.categories[s] = s === "necessary" || fields[s] === "yes"; });
  window.getCkyConsent = () => ({activeLaw: "gdpr", categories: Object.assign({}, state.categories),
    isUserActionCompleted: state.done, consentID: state.consentID, languageCode: "en"});
  const choose = (yes) => {
    const c = state.categories, v = (b) => (b ? "yes" : "no");
    SLUGS.forEach((s) => { c[s] = s === "necessary" || yes; });
    state.done = true;
    const value = ["consentid:" + state.consentID, "consent:" + v(yes), "action:yes"]
      .concat(SLUGS.map((s) => s + ":" + v(c[s])), "other:" + v(yes)).join(",");
    document.cookie = "cookieyes-consent=" + value + "; Path=/; SameSite=Lax; max-age=31536000";
    banner.hidden = true;
    document.dispatchEvent(new CustomEvent("cookieyes_consent_update",
      {detail: {accepted: SLUGS.filter((s) => c[s]), rejected: SLUGS.filter((s) => !c[s])}}));
  };
  document.getElementById("cky-accept").addEventListener("click", () => choose(true));
  document.getElementById("cky-reject").addEventListener("click", () => choose(false));
  document.getElementById("cky-settings").addEventListener("click", () => { banner.hidden = false; });
  banner.hidden = state.done;
  document.dispatchEvent(new CustomEvent("cookieyes_banner_load", {detail: window.getCkyConsent()}));
})();"""

DEMO_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}"
    "nav a{margin-right:1rem} form{display:grid;gap:.5rem;max-width:20rem}"
    "#cky-banner{position:fixed;z-index:2;left:1rem;right:1rem;bottom:1rem;max-width:30rem;margin:auto;"
    "padding:0 1rem 1rem;background:#fff;border:1px solid #bbb;border-radius:.5rem;"
    "box-shadow:0 2px 12px #0003}"
    "#cky-settings{position:fixed;z-index:1;left:.5rem;bottom:.5rem;font-size:.75rem}"
)

DEMO_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><script>{stub}</script><title>{title} - Acme demo shop</title>
<style>{style}</style></head>
<body><nav><a href="/">Home</a><a href="/products">Products</a><a href="/contact">Contact</a></nav>
<h1>{title}</h1>{body}{banner}<script>{consent}</script></body></html>"""

# Products page: a custom event per button.
ADD_TO_CART_SCRIPT = """document.querySelectorAll(".add-to-cart").forEach((button) => {
  button.addEventListener("click", () => {
    const {sku, price} = button.dataset;
    HaloTrack.track("add_to_cart", {sku, price: Number(price), currency: "CZK"});
    button.nextElementSibling.hidden = false;
  });
});"""

# Contact page: tell HaloTrack who this visitor is, then let the form post as usual.
IDENTIFY_SCRIPT = """document.getElementById("contact-form").addEventListener("submit", (event) => {
  const form = event.currentTarget, who = {};
  ["email", "phone"].forEach((name) => {
    const value = form.elements[name].value.trim();
    if (value) who[name] = value;
  });
  if (Object.keys(who).length) HaloTrack.identify(who);
});"""


def demo_page(title: str, body: str) -> web.Response:
    text = DEMO_PAGE.format(title=title, body=body, stub=QUEUE_STUB, style=DEMO_STYLE, banner=CONSENT_BANNER,
                            consent=CONSENT_SCRIPT)
    return web.Response(text=text, content_type="text/html")


def create_demo_site() -> web.Application:
    """A tiny client site: pages with a CookieYes-style banner, an add-to-cart event, a contact form posting
    to HaloTrack (identify on submit), a redirect."""

    async def home(request: web.Request) -> web.Response:
        body = (
            "<p>Welcome to the Acme demo shop, served through HaloTrack.</p>"
            "<p>Try it: arrive from an ad link below, accept or reject cookies in the banner (reopen it with "
            "Cookie settings), add something to the cart on Products, then send the Contact form.</p>"
            "<p>Arrive as if from an ad:</p><ul>"
            '<li><a href="/?utm_source=google&amp;utm_medium=cpc&amp;utm_campaign=summer&amp;'
            'gclid=demo-gclid">Google Ads</a></li>'
            '<li><a href="/?utm_source=facebook&amp;utm_medium=social&amp;fbclid=demo-fbclid">'
            "Facebook</a></li>"
            '<li><a href="/?utm_source=newsletter&amp;utm_medium=email">Newsletter</a></li></ul>'
        )
        return demo_page("Home", body)

    async def products(request: web.Request) -> web.Response:
        items = "".join(
            f'<li>{name} - {label} CZK <button type="button" class="add-to-cart" data-sku="{sku}" '
            f'data-price="{price}">Add to cart</button> <small hidden>Added</small></li>'
            for sku, name, price, label in (("anvil", "Anvil", 1200, "1 200"),
                                            ("rocket-skates", "Rocket skates", 5400, "5 400")))
        return demo_page("Products", f"<ul>{items}</ul><script>{ADD_TO_CART_SCRIPT}</script>")

    async def contact(request: web.Request) -> web.Response:
        body = (
            '<form id="contact-form" method="post" action="/_halo/webhook/lead">'
            '<input type="hidden" name="_redirect" value="/thanks">'
            '<input type="hidden" name="form_type" value="contact">'
            '<label>Email <input name="email" type="email" required></label>'
            '<label>Phone <input name="phone" type="tel"></label>'
            '<label>Message <textarea name="message"></textarea></label>'
            f'<button type="submit">Send</button></form><script>{IDENTIFY_SCRIPT}</script>'
        )
        return demo_page("Contact", body)

    async def thanks(request: web.Request) -> web.Response:
        return demo_page("Thank you", "<p>We will be in touch.</p>"
                         '<p>Now see your lead as the shop\'s marketer would: <a id="dashboard-link" '
                         'href="/_halo/dashboard">open the HaloTrack dashboard</a> and sign in with the demo '
                         "operator key <code>halo-proxy demo</code> printed.</p>")

    app = web.Application()
    app.router.add_get("/", home)
    app.router.add_get("/products", products)
    app.router.add_get("/contact", contact)
    app.router.add_get("/thanks", thanks)
    return app


def demo_config(site_port: int, webhook_secret: str, operator_key: str | None = None) -> str:
    keys = (f'    api_keys:\n      - {{name: demo, sha256: "{key_digest(operator_key)}", scopes: [report, privacy]}}\n'
            if operator_key else "")
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
{keys}"""


def _made_once(path: Path, make) -> str:  # type: ignore[no-untyped-def]
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make() + "\n")
    return path.read_text().strip()


def demo_webhook_secret(data_dir: Path) -> str:
    """The demo tenant's webhook secret: made once under HALO_DATA_DIR, so signed examples keep working."""
    return _made_once(data_dir / "demo-webhook.secret", lambda: secrets.token_hex(16))


def demo_operator_key(data_dir: Path) -> str:
    """The demo tenant's operator key (scopes report and privacy): made once under HALO_DATA_DIR and printed,
    so the dashboard and the privacy routes can be tried; only its digest is in the tenant file."""
    return _made_once(data_dir / "demo-operator.key", new_key)


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
    operator_key = demo_operator_key(data_dir)

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
        config_path.write_text(demo_config(site_port, secret, operator_key), encoding="utf-8")
        lines = [
            f"Demo site (direct):     http://127.0.0.1:{site_port}/",
            f"Through HaloTrack:      http://localhost:{port}/",
            f"  from a Google ad:     http://localhost:{port}/?utm_source=google&utm_medium=cpc&gclid=demo",
            f"  health:               http://localhost:{port}/_halo/healthz",
            f"Dashboard:              http://localhost:{port}/_halo/dashboard",
            f"  operator key:         {operator_key}   (report and privacy scopes; sign in with it)",
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
