"""`halo-proxy rotate-keys` and a new master secret end to end: stored personal data rewritten under a new key
version, old rows and cookies readable meanwhile, the old secret needed by nothing afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web

from halo_proxy.app import WRITER, create_app
from halo_proxy.crypto import KeyRing, blob_version
from halo_proxy.metrics import Metrics
from halo_proxy.services.rotation import UnreadableKeyVersion
from halo_proxy.storage import conversions as conversion_store
from halo_proxy.storage import identities as identity_store
from halo_proxy.storage import sessions as session_store
from halo_proxy.storage.conversions import ConversionWrite
from halo_proxy.storage.rotation import PII_COLUMNS
from halo_proxy.tracking.models import Consent, Device, Geo, Touch
from tests.procs import TEST_SECRET
from tests.test_operators import HOST, OPS, PAGE, person_journey, settings, signed, url
from tests.upstream import create_upstream

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


async def test_rotate_keys_rewraps_every_ciphertext_and_old_rows_stay_readable(db_pool, database, tmp_path):
    await db_pool.execute("TRUNCATE sessions, touches, identities, conversions, forwards CASCADE")
    v1 = KeyRing(TEST_SECRET)
    sid = uuid.uuid4()
    await session_store.write_visits(db_pool, [session_store.SessionWrite(
        tenant_id="shop", session_id=sid, is_new=True, touch=Touch(at=NOW, source="google", medium="cpc"),
        device=Device("mobile", "Chrome", "Android"), geo=Geo(), consent=Consent(True, True),
        ip_hash=v1.hash_ip("shop", "198.51.100.7"), ip_enc=v1.encrypt("shop", "sessions", "ip_enc", "198.51.100.7"),
        user_agent_enc=v1.encrypt("shop", "sessions", "user_agent_enc", "UA"), at=NOW)])
    await identity_store.link_identity(db_pool, "shop", sid, "email", v1.blind_index("shop", "email", "a@b.cz"),
                                       v1.encrypt("shop", "identities", "enc", "a@b.cz"), NOW)
    cid = uuid.uuid4()
    await conversion_store.insert_conversion(db_pool, ConversionWrite(
        id=cid, tenant_id="shop", kind="lead", source="api", created_at=NOW,
        email_enc=v1.encrypt("shop", "conversions", "email_enc", "a@b.cz"),
        name_enc=v1.encrypt("shop", "conversions", "name_enc", "Ada")))

    config = tmp_path / "tenants.yaml"
    config.write_text("tenants:\n  - {id: shop, hosts: [shop.localhost], upstream: 'http://127.0.0.1:1'}\n")
    env = {**os.environ, "HALO_SECRET_KEY": TEST_SECRET, "HALO_DATABASE_URL": database.dsn}
    result = subprocess.run([sys.executable, "-m", "halo_proxy", "rotate-keys", "--config", str(config),
                             "--to-version", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 sessions, 1 identities, 1 conversions" in result.stdout

    v2 = KeyRing(TEST_SECRET, current_version=2)
    session = await session_store.get_session(db_pool, "shop", sid)
    assert blob_version(session.ip_enc) == 2 and v2.decrypt("shop", "sessions", "ip_enc", session.ip_enc) == \
        "198.51.100.7"
    enc = await db_pool.fetchval("SELECT enc FROM identities WHERE session_id = $1", sid)
    assert blob_version(enc) == 2 and v2.decrypt("shop", "identities", "enc", enc) == "a@b.cz"
    record = await conversion_store.get_conversion(db_pool, "shop", cid)
    assert blob_version(record.email_enc) == 2 and blob_version(record.name_enc) == 2
    assert v2.decrypt("shop", "conversions", "name_enc", record.name_enc) == "Ada"
    # A second run has nothing left to do.
    again = subprocess.run([sys.executable, "-m", "halo_proxy", "rotate-keys", "--config", str(config),
                            "--to-version", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert "0 sessions, 0 identities, 0 conversions" in again.stdout


# --- a new master secret, end to end: the proxy during a rotation, the command, and the start-up check -------

NEW_SECRET = "cd" * 32
OLD_RING = KeyRing(TEST_SECRET)
NEW_RING = KeyRing(NEW_SECRET, 2, previous={1: TEST_SECRET})




async def _app(aiohttp_server, pool, ring, port_factory):  # type: ignore[no-untyped-def]
    upstream = await aiohttp_server(create_upstream())
    return await aiohttp_server(create_app(settings(upstream.port, port_factory()), Metrics(), keys=ring,
                                           pool=pool, migrate=False))


def _halo(resp: aiohttp.ClientResponse) -> str | None:
    morsel = resp.cookies.get("_halo")
    return morsel.value if morsel is not None else None


async def test_a_visitor_keeps_their_session_across_a_new_master_secret(aiohttp_server, clean, database, tmp_path,
                                                                         unused_tcp_port_factory):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        old_site = await _app(aiohttp_server, clean, OLD_RING, unused_tcp_port_factory)
        cookie = await person_journey(http, old_site)  # under the old secret: cookie, links, a lead, an event
        sid = OLD_RING.open_session("shop", cookie)
        sessions_before = await clean.fetchval("SELECT count(*) FROM sessions")

        site = await _app(aiohttp_server, clean, NEW_RING, unused_tcp_port_factory)
        # A returning visitor: the same session, sealed again under the new key; nothing new stored.
        async with http.get(url(site, "/"), headers={**PAGE, "Host": HOST, "Cookie": f"_halo={cookie}"}) as resp:
            assert resp.status == 200
            resealed = _halo(resp)
        assert resealed and resealed != cookie
        assert KeyRing(NEW_SECRET, 2).open_session_state("shop", resealed) == (sid, 3)
        async with http.get(url(site, "/"), headers={**PAGE, "Host": HOST, "Cookie": f"_halo={resealed}"}) as resp:
            assert resp.status == 200 and _halo(resp) is None  # the fast path again: no cookie to set
        await site.app[WRITER].flush()
        assert await clean.fetchval("SELECT count(*) FROM sessions") == sessions_before
        # Before `rotate-keys` ran, a lead naming the person matches the link stored under the old key.
        answer = await signed(http, site, "/_halo/webhook/lead", {"email": "jana.novak@example.cz",
                                                                  "event_id": "after-new-key"})
        assert answer["match_type"] == "email"

    config = tmp_path / "tenants.yaml"
    config.write_text("tenants:\n  - {id: shop, hosts: [shop.localhost], upstream: 'http://127.0.0.1:1'}\n")
    env = {**os.environ, "HALO_SECRET_KEY": NEW_SECRET, "HALO_DATABASE_URL": database.dsn}
    env.pop("HALO_PREVIOUS_SECRET_KEYS", None)
    command = [sys.executable, "-m", "halo_proxy", "rotate-keys", "--config", str(config), "--to-version", "2"]
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2
    assert "cannot be decrypted" in refused.stderr and "HALO_PREVIOUS_SECRET_KEYS" in refused.stderr
    assert "nothing was changed" in refused.stderr and TEST_SECRET not in refused.stderr

    done = subprocess.run(command, capture_output=True, text=True, env={
        **env, "HALO_PREVIOUS_SECRET_KEYS": f"1:{TEST_SECRET}"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rewritten under key version 2" in done.stdout and "one cookie lifetime (365 days)" in done.stdout

    # Without the old secret now: every row reads, the person is found and erased by the new key alone.
    only_new = KeyRing(NEW_SECRET, 2)
    for table, column, blob in [(t, c, bytes(r[c])) for t, cols in PII_COLUMNS.items()
                                for r in await clean.fetch(f"SELECT {', '.join(cols)} FROM {t}")
                                for c in cols if r[c] is not None]:
        only_new.decrypt("shop", table, column, blob)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        site = await _app(aiohttp_server, clean, only_new, unused_tcp_port_factory)
        async with http.get(url(site, "/_halo/export-user?email=jana.novak@example.cz"),
                            headers={"Host": HOST, "Authorization": f"Bearer {OPS}"}) as resp:
            export = await resp.json()
        assert resp.status == 200 and [s["id"] for s in export["sessions"]] == [str(sid)]
        assert len(export["leads"]) == 2 and export["identities"][0]["value"] == "jana.novak@example.cz"


async def test_the_proxy_refuses_to_start_when_an_older_version_cannot_be_read(aiohttp_server, clean,
                                                                              unused_tcp_port_factory):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        await person_journey(http, await _app(aiohttp_server, clean, OLD_RING, unused_tcp_port_factory))
    # as server.py starts it: the runner's setup raises, its cleanup closes what was opened
    upstream = await aiohttp_server(create_upstream())
    runner = web.AppRunner(create_app(settings(upstream.port, unused_tcp_port_factory()), Metrics(),
                                      keys=KeyRing(NEW_SECRET, 2), pool=clean, migrate=False))
    try:
        with pytest.raises(UnreadableKeyVersion, match="key version 1"):
            await runner.setup()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("env", "message"), [
    ({"HALO_KEY_VERSION": "2", "HALO_PREVIOUS_SECRET_KEYS": "2:" + "ab" * 32},
     "HALO_PREVIOUS_SECRET_KEYS is invalid: entry 1 names key version 2"),
    ({"HALO_KEY_VERSION": "2", "HALO_PREVIOUS_SECRET_KEYS": "1:short"},
     "HALO_PREVIOUS_SECRET_KEYS is invalid: entry 1 (key version 1)"),
    ({"HALO_KEY_VERSION": "zwei"}, "HALO_KEY_VERSION must be a whole number"),
])
def test_key_settings_are_checked_before_anything_starts(monkeypatch, env, message):
    from halo_proxy.server import StartupError, load_keys

    monkeypatch.setenv("HALO_SECRET_KEY", NEW_SECRET)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StartupError, match=re.escape(message)) as err:
        load_keys(generate=False)
    assert "ab" * 32 not in str(err.value) and NEW_SECRET not in str(err.value)


def test_previous_secrets_reach_the_ring(monkeypatch):
    from halo_proxy.server import load_keys

    monkeypatch.setenv("HALO_SECRET_KEY", NEW_SECRET)
    monkeypatch.setenv("HALO_KEY_VERSION", "2")
    monkeypatch.setenv("HALO_PREVIOUS_SECRET_KEYS", f"1:{TEST_SECRET}")
    ring = load_keys(generate=False)
    old_cookie = OLD_RING.seal_session("shop", uuid.UUID(int=7))
    assert ring.current_version == 2 and ring.open_session("shop", old_cookie) == uuid.UUID(int=7)
