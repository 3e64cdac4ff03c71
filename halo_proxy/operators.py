"""Operator keys: issuing them (`halo-proxy hash-key`) and checking a bearer key against the tenants' `api_keys`.

A key is 32 random bytes, URL-safe base64, prefixed `halo_` so it is recognisable in a secret scanner; the tenant
file holds only its SHA-256 (hex). `check_key` is pure: the digest of the presented key is compared, in constant
time, with every configured digest of every tenant (the loop never stops early), so neither the answer's timing nor
its code tells which tenant a wrong key was tried against beyond what the contract's 401/403 say.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from .config import SCOPES, ApiKey, Settings, Tenant

KEY_PREFIX = "halo_"

# Outcomes, usable as metric labels (halo_operator_auth_total{outcome}).
OK = "ok"
MISSING = "missing_key"
UNKNOWN = "invalid_key"
WRONG_TENANT = "wrong_tenant"
MISSING_SCOPE = "missing_scope"
OUTCOMES = (OK, MISSING, UNKNOWN, WRONG_TENANT, MISSING_SCOPE)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def yaml_line(name: str, key: str, scopes: list[str]) -> str:
    """The `api_keys` entry for a key: its name, digest and scopes."""
    return f'- {{name: {name}, sha256: "{key_digest(key)}", scopes: [{", ".join(scopes)}]}}'


def parse_scopes(text: str) -> list[str]:
    """`report,privacy` as a list, each known (ValueError naming an unknown one)."""
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"unknown scope(s) {unknown or [text]}; known: {', '.join(sorted(SCOPES))}")
    return list(dict.fromkeys(scopes))


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str  # OUTCOMES
    key: ApiKey | None = None  # the matching key of this tenant when OK


def bearer(header: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 256:
        return None
    return value


def check_key(settings: Settings, tenant: Tenant, presented: str | None, scope: str) -> Verdict:
    """Who a presented key is: this tenant's key with the scope (OK), without it (MISSING_SCOPE), another tenant's
    (WRONG_TENANT), nobody's (UNKNOWN), or no key at all (MISSING)."""
    if presented is None:
        return Verdict(MISSING)
    digest = key_digest(presented).encode("ascii")
    mine: ApiKey | None = None
    foreign = False
    for candidate in settings.tenants:
        for key in candidate.api_keys:
            if hmac.compare_digest(digest, key.sha256.encode("ascii")):
                if candidate is tenant:
                    mine = key
                else:
                    foreign = True
    if mine is not None:
        return Verdict(OK, mine) if scope in mine.scopes else Verdict(MISSING_SCOPE)
    return Verdict(WRONG_TENANT) if foreign else Verdict(UNKNOWN)
