"""Key rotation's rows: every ciphertext, blind index and IP hash written under an older key version, rewritten
under the current one (`halo-proxy rotate-keys`), and a sample of each older version for the start-up check.

What each table holds, and how a row's version is found:

- sessions: `ip_enc`, `user_agent_enc` (their first byte), `ip_hash` (32 bytes: version 1, else its first byte;
  see crypto.ip_hash_version). A keyset walk over the tenant's primary key, no extra index on the hot table.
- identities: `enc` (its generated `key_version`, indexed) and `bidx`, written together, so re-keyed together
  from the decrypted value. `bidx` is in the primary key: a row whose new index meets a link the proxy made
  meanwhile under the new key merges into it.
- conversions: `email_enc`, `phone_enc`, `name_enc`, `message_enc`, `fields_enc` (their least version,
  `pii_key_version`, indexed) and `email_bidx`, `phone_bidx` beside the encrypted values they index.
- events: `props_enc`; forwards: `payload_enc` (a pending or dead forward is sent from it). Keyset walks by id.

Each batch is locked (`FOR NO KEY UPDATE`) and rewritten in its own transaction, so a run can be stopped and
started again, and visits written meanwhile keep their own (current) values. The privacy audit's keyed
hashes are not re-keyed: no plain value stands beside them (they stay comparable under their old key only).
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

import asyncpg

from .db import translate_errors

__all__ = ["PII_COLUMNS", "Rekey", "rotate_tenant", "samples_of_older_versions"]

Executor = asyncpg.Pool | asyncpg.Connection

# Encrypted columns per table, as the rotation re-encrypts them (and as the caller names them when encrypting).
PII_COLUMNS: dict[str, tuple[str, ...]] = {
    "sessions": ("ip_enc", "user_agent_enc"),
    "identities": ("enc",),
    "conversions": ("email_enc", "phone_enc", "name_enc", "message_enc", "fields_enc"),
    "events": ("props_enc",),
    "forwards": ("payload_enc",),
}


class Rekey(Protocol):
    """One tenant's keys as the rotation uses them (services/rotation.py binds a KeyRing to a tenant)."""

    version: int  # the current key version: everything is rewritten under it

    def reencrypt(self, table: str, column: str, blob: bytes) -> bytes: ...

    def decrypt(self, table: str, column: str, blob: bytes) -> str: ...

    def blind_index(self, kind: str, normalised_value: str) -> bytes: ...

    def rekey_ip_hash(self, ip_hash: bytes, ip: str | None) -> bytes | None: ...


# The version of an IP hash in SQL, as crypto.ip_hash_version reads it.
_IP_HASH_VERSION = "(CASE WHEN octet_length(ip_hash) = 32 THEN 1 ELSE get_byte(ip_hash, 0) END)"

_SESSIONS_BATCH = f"""
SELECT id, ip_enc, user_agent_enc, ip_hash FROM sessions
WHERE tenant_id = $1 AND id > $2
  AND (get_byte(ip_enc, 0) < $3 OR get_byte(user_agent_enc, 0) < $3 OR {_IP_HASH_VERSION} < $3)
ORDER BY id
LIMIT $4
FOR NO KEY UPDATE
"""
_SESSIONS_UPDATE = """
UPDATE sessions s SET ip_enc = u.ip_enc, user_agent_enc = u.user_agent_enc, ip_hash = u.ip_hash
FROM unnest($2::uuid[], $3::bytea[], $4::bytea[], $5::bytea[]) AS u(id, ip_enc, user_agent_enc, ip_hash)
WHERE s.tenant_id = $1 AND s.id = u.id
"""
# A rewritten row leaves the range of the indexed version, so each batch takes the oldest rows left.
_IDENTITIES_BATCH = """
SELECT kind, bidx, session_id, enc, created_at, last_seen_at FROM identities
WHERE tenant_id = $1 AND key_version < $2
ORDER BY key_version
LIMIT $3
FOR NO KEY UPDATE
"""
_IDENTITIES_DELETE = """
DELETE FROM identities i
USING unnest($2::text[], $3::bytea[], $4::uuid[]) AS u(kind, bidx, session_id)
WHERE i.tenant_id = $1 AND i.kind = u.kind AND i.bidx = u.bidx AND i.session_id = u.session_id
"""
_IDENTITIES_INSERT = """
INSERT INTO identities AS i (tenant_id, session_id, kind, bidx, enc, created_at, last_seen_at)
SELECT $1, u.session_id, u.kind, u.bidx, u.enc, u.created_at, u.last_seen_at
FROM unnest($2::text[], $3::bytea[], $4::uuid[], $5::bytea[], $6::timestamptz[], $7::timestamptz[])
    AS u(kind, bidx, session_id, enc, created_at, last_seen_at)
ON CONFLICT (tenant_id, kind, bidx, session_id) DO UPDATE SET
    created_at = least(i.created_at, EXCLUDED.created_at),
    last_seen_at = greatest(i.last_seen_at, EXCLUDED.last_seen_at),
    enc = CASE WHEN EXCLUDED.last_seen_at > i.last_seen_at THEN EXCLUDED.enc ELSE i.enc END
"""
_CONVERSIONS_BATCH = """
SELECT id, email_enc, phone_enc, name_enc, message_enc, fields_enc FROM conversions
WHERE tenant_id = $1 AND pii_key_version < $2
ORDER BY pii_key_version
LIMIT $3
FOR NO KEY UPDATE
"""
_CONVERSIONS_UPDATE = """
UPDATE conversions c SET email_enc = u.email_enc, phone_enc = u.phone_enc, name_enc = u.name_enc,
                         message_enc = u.message_enc, fields_enc = u.fields_enc,
                         email_bidx = u.email_bidx, phone_bidx = u.phone_bidx
FROM unnest($2::uuid[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[], $7::bytea[], $8::bytea[], $9::bytea[])
    AS u(id, email_enc, phone_enc, name_enc, message_enc, fields_enc, email_bidx, phone_bidx)
WHERE c.tenant_id = $1 AND c.id = u.id
"""
_BY_ID_BATCH = """
SELECT id, {column} FROM {table}
WHERE tenant_id = $1 AND id > $2 AND get_byte({column}, 0) < $3
ORDER BY id
LIMIT $4
FOR NO KEY UPDATE
"""
_BY_ID_UPDATE = """
UPDATE {table} t SET {column} = u.blob
FROM unnest($2::bigint[], $3::bytea[]) AS u(id, blob)
WHERE t.tenant_id = $1 AND t.id = u.id
"""


def _rewrapped(rekey: Rekey, table: str, column: str, blob: bytes | None) -> bytes | None:
    if blob is None or len(blob) == 0 or blob[0] >= rekey.version:
        return blob
    new = rekey.reencrypt(table, column, bytes(blob))
    if not new or new[0] != rekey.version:
        raise ValueError(f"re-encrypting {table}.{column} did not give a key version {rekey.version} value")
    return new


def _plain(rekey: Rekey, table: str, column: str, blob: bytes | None) -> str | None:
    return rekey.decrypt(table, column, bytes(blob)) if blob else None


async def _sessions(conn: asyncpg.Connection, tenant_id: str, rekey: Rekey, batch: int) -> int:
    done = 0
    cursor = UUID(int=0)
    while True:
        async with conn.transaction():
            rows = await conn.fetch(_SESSIONS_BATCH, tenant_id, cursor, rekey.version, batch)
            if not rows:
                return done
            ip_hashes = [
                rekey.rekey_ip_hash(bytes(r["ip_hash"]), _plain(rekey, "sessions", "ip_enc", r["ip_enc"]))
                if r["ip_hash"] is not None else None
                for r in rows
            ]
            await conn.execute(
                _SESSIONS_UPDATE, tenant_id, [r["id"] for r in rows],
                *([_rewrapped(rekey, "sessions", col, r[col]) for r in rows] for col in PII_COLUMNS["sessions"]),
                ip_hashes,
            )
        done += len(rows)
        cursor = rows[-1]["id"]


async def _identities(conn: asyncpg.Connection, tenant_id: str, rekey: Rekey, batch: int) -> int:
    done = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(_IDENTITIES_BATCH, tenant_id, rekey.version, batch)
            if not rows:
                return done
            await conn.execute(_IDENTITIES_DELETE, tenant_id, [r["kind"] for r in rows],
                               [r["bidx"] for r in rows], [r["session_id"] for r in rows])
            # Links of one session that older versions indexed apart become one link under the new key.
            merged: dict[tuple[str, bytes, UUID], list] = {}
            for r in rows:
                key = (r["kind"], rekey.blind_index(r["kind"], rekey.decrypt("identities", "enc", bytes(r["enc"]))),
                       r["session_id"])
                new = [_rewrapped(rekey, "identities", "enc", r["enc"]), r["created_at"], r["last_seen_at"]]
                seen = merged.get(key)
                if seen is None:
                    merged[key] = new
                else:
                    seen[1] = min(seen[1], new[1])
                    if new[2] > seen[2]:
                        seen[0], seen[2] = new[0], new[2]
            await conn.execute(
                _IDENTITIES_INSERT, tenant_id, [k[0] for k in merged], [k[1] for k in merged],
                [k[2] for k in merged], [v[0] for v in merged.values()], [v[1] for v in merged.values()],
                [v[2] for v in merged.values()],
            )
        done += len(rows)


async def _conversions(conn: asyncpg.Connection, tenant_id: str, rekey: Rekey, batch: int) -> int:
    done = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(_CONVERSIONS_BATCH, tenant_id, rekey.version, batch)
            if not rows:
                return done
            new = [[_rewrapped(rekey, "conversions", col, r[col]) for r in rows]
                   for col in PII_COLUMNS["conversions"]]
            indexes = []
            for kind in ("email", "phone"):
                plains = (_plain(rekey, "conversions", f"{kind}_enc", r[f"{kind}_enc"]) for r in rows)
                indexes.append([rekey.blind_index(kind, p) if p is not None else None for p in plains])
            await conn.execute(_CONVERSIONS_UPDATE, tenant_id, [r["id"] for r in rows], *new, *indexes)
        done += len(rows)


async def _by_id(conn: asyncpg.Connection, table: str, tenant_id: str, rekey: Rekey, batch: int) -> int:
    [column] = PII_COLUMNS[table]
    select = _BY_ID_BATCH.format(table=table, column=column)
    update = _BY_ID_UPDATE.format(table=table, column=column)
    done = 0
    cursor = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(select, tenant_id, cursor, rekey.version, batch)
            if not rows:
                return done
            await conn.execute(update, tenant_id, [r["id"] for r in rows],
                               [_rewrapped(rekey, table, column, r[column]) for r in rows])
        done += len(rows)
        cursor = rows[-1]["id"]


async def rotate_tenant(db: Executor, tenant_id: str, rekey: Rekey, *, batch: int = 500) -> dict[str, int]:
    """Rewrite one tenant's rows written under a key version older than `rekey.version`: ciphertexts
    re-encrypted, blind indexes and IP hashes re-keyed. Returns the rows rewritten per table."""
    if batch <= 0:
        raise ValueError("batch must be positive")
    with translate_errors():
        if isinstance(db, asyncpg.Pool):
            async with db.acquire() as conn:
                return await _rotate(conn, tenant_id, rekey, batch)
        return await _rotate(db, tenant_id, rekey, batch)


async def _rotate(conn: asyncpg.Connection, tenant_id: str, rekey: Rekey, batch: int) -> dict[str, int]:
    return {
        "sessions": await _sessions(conn, tenant_id, rekey, batch),
        "identities": await _identities(conn, tenant_id, rekey, batch),
        "conversions": await _conversions(conn, tenant_id, rekey, batch),
        "events": await _by_id(conn, "events", tenant_id, rekey, batch),
        "forwards": await _by_id(conn, "forwards", tenant_id, rekey, batch),
    }


# The oldest row at or above a version, read through the version indexes (a range, as the batches read them:
# with an equality the planner may scan a small table instead); a row above it means none of that version.
_SAMPLES = """
(SELECT 'identities' AS tbl, 'enc' AS col, enc AS blob, key_version AS version FROM identities
  WHERE tenant_id = $1 AND key_version >= $2 ORDER BY key_version LIMIT 1)
UNION ALL
(SELECT 'conversions', c.col, c.blob, pii_key_version FROM conversions,
        LATERAL (VALUES ('email_enc', email_enc), ('phone_enc', phone_enc), ('name_enc', name_enc),
                        ('message_enc', message_enc), ('fields_enc', fields_enc)) AS c(col, blob)
  WHERE tenant_id = $1 AND pii_key_version >= $2 AND get_byte(c.blob, 0) = pii_key_version
  ORDER BY pii_key_version LIMIT 1)
"""


async def samples_of_older_versions(db: Executor, tenant_id: str, versions: list[int]) -> list[tuple[int, str,
                                                                                                       str, bytes]]:
    """One stored ciphertext (version, table, column, blob) per older version the tenant still has, found
    through the indexed version columns: what the start-up check tries to decrypt."""
    found = []
    with translate_errors():
        for version in versions:
            for row in await db.fetch(_SAMPLES, tenant_id, version):
                if row["version"] == version:
                    found.append((version, row["tbl"], row["col"], bytes(row["blob"])))
    return found
