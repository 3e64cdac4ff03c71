"""Shared fixtures of the storage tests: query plans on a database seeded like production."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", ()):
        nodes.extend(plan_nodes(child))
    return nodes


_EXPLAIN = """
CREATE OR REPLACE FUNCTION pg_temp.generic_plan(query text) RETURNS SETOF json LANGUAGE plpgsql AS $fn$
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN (GENERIC_PLAN, FORMAT JSON) ' || query;
END
$fn$
"""


async def generic_plan(conn: asyncpg.Connection, sql: str) -> list[dict[str, Any]]:
    """The plan nodes of a statement with $n parameters, as planned for any parameter values."""
    await conn.execute(_EXPLAIN)
    raw = await conn.fetchval("SELECT pg_temp.generic_plan($1)", sql)
    return plan_nodes(json.loads(raw)[0]["Plan"])


# Enough rows, spread over tenants, for the planner to cost plans as in production (statistics from ANALYZE).
_SEED = """
TRUNCATE sessions, touches, identities, conversions, forwards, forward_attempts, events, consent_changes,
    anon_events;
INSERT INTO sessions (tenant_id, id, created_at, updated_at, ft_channel, ft_landing_path, ft_at,
                      lt_channel, lt_landing_path, lt_at, consent_analytics, consent_marketing,
                      ip_enc, user_agent_enc)
SELECT 'seed_' || (i % 20), gen_random_uuid(), t, t, 'Direct', '/', t, 'Direct', '/', t, true, true,
       '\\x01'::bytea || sha256(i::text::bytea), '\\x01'::bytea || sha256(i::text::bytea)
FROM generate_series(1, 5000) i, LATERAL (SELECT timestamptz '2026-01-01' + i * interval '1 minute' AS t) x;
INSERT INTO touches (tenant_id, session_id, at, channel, landing_path)
SELECT s.tenant_id, s.id, s.created_at + n * interval '1 hour', 'Direct', '/'
FROM sessions s, generate_series(0, 2) n;
INSERT INTO events (tenant_id, session_id, name, props_enc, at)
SELECT s.tenant_id, s.id, 'seen', NULL, s.created_at FROM sessions s, generate_series(0, 1) n;
INSERT INTO anon_events (tenant_id, day, path, count)
SELECT 'seed_' || (i % 20), date '2026-01-01' + (i / 20), '/p' || (i % 7), 1 FROM generate_series(1, 5000) i
ON CONFLICT DO NOTHING;
INSERT INTO consent_changes (tenant_id, session_id, at, analytics, marketing, gpc, change)
SELECT s.tenant_id, s.id, s.created_at, true, false, false, 'updated' FROM sessions s;
INSERT INTO identities (tenant_id, session_id, kind, bidx, enc, created_at, last_seen_at)
SELECT tenant_id, id, 'email', sha256(id::text::bytea), ip_enc, created_at, created_at FROM sessions;
INSERT INTO conversions (id, tenant_id, kind, source, external_id, created_at, occurred_at,
                         email_enc, email_bidx, phone_bidx, session_id)
SELECT gen_random_uuid(), tenant_id, CASE WHEN hashtext(id::text) % 2 = 0 THEN 'lead' ELSE 'order' END, 'api',
       id::text, created_at, created_at, ip_enc, sha256(id::text::bytea), sha256(('p' || id::text)::bytea), id
FROM sessions;
INSERT INTO forwards (tenant_id, conversion_id, platform, event_id, status, attempts, next_attempt_at,
                      payload_enc, created_at, updated_at)
SELECT c.tenant_id, c.id, p, c.id || ':' || p,
       CASE abs(hashtext(c.id::text || p)) % 100 WHEN 0 THEN 'pending' WHEN 1 THEN 'dead' ELSE 'sent' END,
       1, c.created_at, '\\x01'::bytea, c.created_at, c.created_at
FROM conversions c, unnest(ARRAY['meta', 'ga4']) p;
ANALYZE;
"""


@pytest.fixture
async def planner(db_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection on a database holding a production-like spread of rows (seeded once per module; this
    empties the tables first, so plan tests come last in their module)."""
    async with db_pool.acquire() as conn:
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM forwards WHERE tenant_id = 'seed_0')"):
            await conn.execute(_SEED)
        yield conn


async def assert_indexed(conn: asyncpg.Connection, sql: str, indexes: set[str]) -> None:
    """The statement's generic plan reads its tables through exactly these indexes, never a full scan."""
    nodes = await generic_plan(conn, sql)
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    assert {n["Index Name"] for n in nodes if "Index Name" in n} == indexes, nodes
