"""`halo-proxy demo` as a newcomer meets it: the banner comes once the proxy listens, the printed webhook
secret signs a lead that the demo stores, and a second demo on the same ports fails clearly without touching
the first one's tenant file.

The demo shop's pages, read as HTML without a browser (tests/browser runs them): each carries HaloTrack's
queue stub first in `<head>` and the CookieYes-style consent banner, the products call `HaloTrack.track`, the
contact form calls `HaloTrack.identify`, nothing loads from elsewhere, and every inline script passes
`node --check`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser

import aiohttp

from halo_proxy.demo import create_demo_site
from tests.conftest import days_around_today
from tests.procs import free_port


def demo_cmd(port: int, site_port: int, metrics_port: int) -> list[str]:
    return [sys.executable, "-m", "halo_proxy", "demo", "--port", str(port), "--site-port", str(site_port),
            "--metrics-port", str(metrics_port)]


async def read_banner(proc: subprocess.Popen) -> list[str]:
    """Lines printed until "Press Ctrl+C", read from the process's stdout in a thread (bounded)."""
    def read() -> list[str]:
        lines = []
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl+C"):
                break
        return lines

    return await asyncio.to_thread(read)


async def test_the_demo_as_a_newcomer_uses_it(tmp_path, database):
    env = {**os.environ, "HALO_DATA_DIR": str(tmp_path / "halo"), "HALO_DATABASE_URL": database.dsn}
    env.pop("HALO_SECRET_KEY", None)
    port, site_port, metrics_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(demo_cmd(port, site_port, metrics_port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    try:
        banner = await read_banner(proc)
        assert banner and banner[-1].startswith("Press Ctrl+C"), banner
        secret_line = next(line for line in banner if line.startswith("Webhook secret:"))
        secret = secret_line.split()[2]
        assert secret == (tmp_path / "halo" / "demo-webhook.secret").read_text().strip()
        async with aiohttp.ClientSession() as http:
            # Printed after the listener is up: the first request after the banner is answered.
            async with http.get(f"http://127.0.0.1:{port}/_halo/healthz", headers={"Host": "localhost"}) as r:
                assert r.status == 200
            body = json.dumps({"email": "jan@example.cz", "form_type": "contact", "event_id": "lead-1"})
            t = int(time.time())
            sig = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
            async with http.post(f"http://127.0.0.1:{port}/_halo/webhook/lead", data=body, headers={
                    "Host": "localhost", "Content-Type": "application/json", "X-Halo-Signature": f"t={t},v1={sig}"}) as r:
                assert r.status == 201, await r.text()
            # The banner's dashboard URL and operator key: the key reads the newcomer's lead in the report.
            dashboard = next(line for line in banner if line.startswith("Dashboard:")).split()[1]
            assert dashboard == f"http://localhost:{port}/_halo/dashboard"
            key = next(line for line in banner if line.strip().startswith("operator key:")).split()[2]
            assert key == (tmp_path / "halo" / "demo-operator.key").read_text().strip()
            async with http.get(f"http://127.0.0.1:{port}/_halo/report?{days_around_today()}", headers={
                    "Host": "localhost", "Authorization": f"Bearer {key}"}) as r:
                assert r.status == 200 and (await r.json())["totals"]["leads"] == 1
            async with http.get(f"http://127.0.0.1:{port}/_halo/dashboard", headers={"Host": "localhost"}) as r:
                assert r.status == 200 and 'name="key"' in await r.text()

        config = tmp_path / "halo" / f"demo-tenants-{port}.yaml"
        before = config.read_text()
        for other_site in (site_port, free_port()):  # the same ports, or only the proxy's
            second = await asyncio.to_thread(subprocess.run, demo_cmd(port, other_site, free_port()),
                                             capture_output=True, text=True, env=env, timeout=60)
            assert second.returncode == 1
            assert "cannot listen" in second.stderr and "ARGS=" in second.stderr
            assert config.read_text() == before
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0


# --- The demo shop's pages ---------------------------------------------------------------------------------------

PAGES = ("/", "/products", "/contact", "/thanks")
# Verbatim from the HaloTrack snippet: t.js replaces these methods and replays `q`.
QUEUE_STUB = ('window.HaloTrack=window.HaloTrack||{q:[]};["identify","track","consent"].forEach(function(m){'
              'window.HaloTrack[m]=window.HaloTrack[m]||function(){window.HaloTrack.q.push([m,[].slice.call('
              'arguments)])}});')
VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                  "wbr"})


class Page(HTMLParser):
    """The parts of a page the tests read; `errors` lists end tags that close nothing open, and tags left open."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.errors: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[bool, str]] = []  # (inside <head>, text) in document order
        self.script: list[str] | None = None
        self.feed(html)
        self.close()
        self.errors += [f"<{tag}> never closed" for tag in self.open]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag == "script":
            self.script = []
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
            return
        self.open.pop()
        if tag == "script" and self.script is not None:
            self.scripts.append(("head" in self.open, "".join(self.script)))
            self.script = None

    def handle_data(self, data: str) -> None:
        if self.script is not None:
            self.script.append(data)

    def ids(self) -> list[str]:
        return [attrs["id"] or "" for _, attrs in self.elements if "id" in attrs]

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


async def demo_pages(aiohttp_client) -> dict[str, str]:
    client = await aiohttp_client(create_demo_site())
    pages = {}
    for path in PAGES:
        async with client.get(path) as answer:
            assert answer.status == 200 and answer.content_type == "text/html", path
            pages[path] = await answer.text()
    return pages


async def test_demo_pages_parse_as_html_and_load_nothing_from_elsewhere(aiohttp_client):
    for path, html in (await demo_pages(aiohttp_client)).items():
        page = Page(html)
        assert page.errors == [], path
        assert len(page.ids()) == len(set(page.ids())), path
        assert "http://" not in html and "https://" not in html, path
        for _, attrs in page.elements:
            for name in ("src", "href", "action"):
                value = attrs.get(name)
                assert value is None or (value.startswith("/") and not value.startswith("//")), (path, value)
        assert {a["href"] for a in page.find("a")} >= {"/", "/products", "/contact"}, path


async def test_the_home_page_keeps_its_ad_links_and_says_what_to_try(aiohttp_client):
    html = (await demo_pages(aiohttp_client))["/"]
    assert all(step in html for step in ("ad link", "accept or reject cookies", "add something to the cart",
                                         "Contact form"))
    home = Page(html)
    assert {a["href"] for a in home.find("a")} >= {
        "/?utm_source=google&utm_medium=cpc&utm_campaign=summer&gclid=demo-gclid",
        "/?utm_source=facebook&utm_medium=social&fbclid=demo-fbclid",
        "/?utm_source=newsletter&utm_medium=email",
    }


async def test_the_queue_stub_is_the_first_script_in_head_of_every_page(aiohttp_client):
    for path, html in (await demo_pages(aiohttp_client)).items():
        first_in_head, first = Page(html).scripts[0]
        assert first_in_head and first == QUEUE_STUB, path


async def test_every_page_carries_the_cookieyes_style_banner(aiohttp_client):
    for path, html in (await demo_pages(aiohttp_client)).items():
        page = Page(html)
        assert {"cky-banner", "cky-accept", "cky-reject", "cky-settings"} <= set(page.ids()), path
        [banner] = page.find("div", id="cky-banner")
        assert "hidden" in banner, path  # the script shows it while no choice is recorded
        cky_buttons = [b for b in page.find("button") if (b.get("id") or "").startswith("cky-")]
        assert [b["type"] for b in cky_buttons] == ["button"] * 3, path
        [banner_script] = [text for _, text in page.scripts if "cookieyes_banner_load" in text]
        for part in ('"cookieyes-consent=" +', "; Path=/; SameSite=Lax; max-age=31536000", '"action:yes"',
                     '"other:"', "cookieyes_consent_update", "window.getCkyConsent =", 'activeLaw: "gdpr"',
                     'languageCode: "en"', "isUserActionCompleted", "accepted:", "rejected:"):
            assert part in banner_script, (path, part)
        assert "HttpOnly" not in banner_script
        # The consent update is dispatched only after the cookie is written.
        assert banner_script.index("document.cookie =") < banner_script.index('"cookieyes_consent_update"')


async def test_the_products_track_add_to_cart(aiohttp_client):
    page = Page((await demo_pages(aiohttp_client))["/products"])
    buttons = [b for b in page.find("button") if b.get("class") == "add-to-cart"]
    assert len(buttons) == 2
    assert all(b["data-sku"] and int(b["data-price"] or "") > 0 and b["type"] == "button" for b in buttons)
    [script] = [text for _, text in page.scripts if ".add-to-cart" in text]
    assert 'HaloTrack.track("add_to_cart", {' in script and 'currency: "CZK"' in script


async def test_the_contact_form_identifies_the_visitor_and_still_posts(aiohttp_client):
    page = Page((await demo_pages(aiohttp_client))["/contact"])
    [form] = page.find("form")
    assert (form["method"], form["action"]) == ("post", "/_halo/webhook/lead")
    names = {a.get("name") for t, a in page.elements if t in ("input", "textarea")}
    assert {"email", "phone", "_redirect"} <= names and "halo_session_id" not in names  # t.js adds that
    [script] = [text for _, text in page.scripts if '"submit"' in text]
    assert f'getElementById("{form["id"]}")' in script
    assert "HaloTrack.identify(" in script and "preventDefault" not in script


async def test_every_inline_script_passes_node_check(aiohttp_client, tmp_path):
    scripts = {text for html in (await demo_pages(aiohttp_client)).values() for _, text in Page(html).scripts}
    assert len(scripts) == 4  # the stub, the banner, add to cart, identify
    for n, text in enumerate(sorted(scripts)):
        path = tmp_path / f"inline{n}.js"
        path.write_text(text, encoding="utf-8")
        checked = await asyncio.to_thread(subprocess.run, ["node", "--check", str(path)], capture_output=True,
                                          text=True, timeout=60)
        assert checked.returncode == 0, (text[:80], checked.stderr)
