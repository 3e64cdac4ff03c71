"""Key rotation as a use case: every tenant's rows rewritten under the current key version (`halo-proxy
rotate-keys`), and the start-up check that the secrets given can read what is stored under older versions.

The steps an operator takes are in the README ("Key rotation"): run every process with the new secret as
HALO_SECRET_KEY under a higher HALO_KEY_VERSION and the old one in HALO_PREVIOUS_SECRET_KEYS, run
`rotate-keys`, then drop the old secret once a cookie lifetime has passed (visitors' `_halo` cookies are
re-sealed under the new key as they return).
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from halo_proxy.config import Tenant
from halo_proxy.crypto import CryptoError, KeyRing
from halo_proxy.storage import rotation as rotation_store


class TenantRekey:
    """A key ring bound to one tenant, as storage/rotation.py's `Rekey` asks."""

    def __init__(self, keys: KeyRing, tenant_id: str) -> None:
        self.keys = keys
        self.tenant_id = tenant_id
        self.version = keys.current_version

    def reencrypt(self, table: str, column: str, blob: bytes) -> bytes:
        return self.keys.reencrypt(self.tenant_id, table, column, blob)

    def decrypt(self, table: str, column: str, blob: bytes) -> str:
        return self.keys.decrypt(self.tenant_id, table, column, blob)

    def blind_index(self, kind: str, normalised_value: str) -> bytes:
        return self.keys.blind_index(self.tenant_id, kind, normalised_value)

    def rekey_ip_hash(self, ip_hash: bytes, ip: str | None) -> bytes | None:
        return self.keys.rekey_ip_hash(self.tenant_id, ip_hash, ip)


async def rotate(pool: asyncpg.Pool, keys: KeyRing, tenants: Iterable[Tenant]) -> dict[str, dict[str, int]]:
    """Every tenant's rows under older key versions rewritten under the current one; rows per table."""
    return {tenant.id: await rotation_store.rotate_tenant(pool, tenant.id, TenantRekey(keys, tenant.id))
            for tenant in tenants}


class UnreadableKeyVersion(Exception):
    """Stored data of an older key version does not open with the secrets given."""


async def check_readable(pool: asyncpg.Pool, keys: KeyRing, tenants: Iterable[Tenant]) -> None:
    """Decrypt one stored value of each older key version per tenant (two indexed reads a version); raise
    UnreadableKeyVersion naming the version and the setting to fix, before anything is written under the
    wrong belief that old data is readable."""
    older = list(range(1, keys.current_version))
    if not older:
        return
    for tenant in tenants:
        for version, table, column, blob in await rotation_store.samples_of_older_versions(pool, tenant.id, older):
            try:
                keys.decrypt(tenant.id, table, column, blob)
            except CryptoError:
                given = "its own secret" if version in keys.renewed_versions() else "the current HALO_SECRET_KEY"
                raise UnreadableKeyVersion(
                    f"data of tenant {tenant.id!r} written under key version {version} cannot be decrypted with "
                    f"{given}: list that version's secret in HALO_PREVIOUS_SECRET_KEYS as "
                    f"'{version}:<secret>'") from None
