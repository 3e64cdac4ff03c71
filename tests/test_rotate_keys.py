"""`halo-proxy rotate-keys`: stored personal data re-encrypted under a new key version; old rows readable."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

from halo_proxy.crypto import KeyRing, blob_version
from halo_proxy.storage import conversions as conversion_store
from halo_proxy.storage import identities as identity_store
from halo_proxy.storage import sessions as session_store
from halo_proxy.storage.conversions import ConversionWrite
from halo_proxy.tracking.models import Consent, Device, Geo, Touch
from tests.procs import TEST_SECRET

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
