"""Key material and the primitives built on it: visitor cookies, IP hashes, PII encryption, blind indexes
and webhook signatures.

Every key is derived from a master secret with HKDF-SHA256, per tenant and per purpose, under labels of the
form ``halo|v1|<tenant>|<purpose>``. The labels are part of the storage format: changing one makes every stored
ciphertext, blind index and visitor cookie of that purpose unreadable.

Key versions
------------
Each key version 1..255 has a master secret: the current one is `HALO_SECRET_KEY` (version `HALO_KEY_VERSION`),
older ones come from `HALO_PREVIOUS_SECRET_KEYS`; an older version given no secret of its own shares the current
one (as before versions had secrets: then only the PII keys, labelled per version, differ). Everything written
says which version wrote it: encrypted fields in their first byte, cookies in their format, IP hashes in a
leading byte (none: version 1). Blind indexes carry no version (they are compared, not read): a lookup tries
the index under every known version, and `halo-proxy rotate-keys` re-keys them, with the IP hashes, from the
encrypted values beside them. New values are always written under the current version.

Formats
-------
Visitor cookie value (44 characters of unpadded URL-safe base64, cookie-safe without quoting), version 1::

    0x1s (format 1, state s) || session id (16 bytes) || HMAC-SHA256(cookie key, first 17 bytes)[:16]

sealed under a later version v (the tag one byte shorter, so the value keeps its length)::

    0x2s (format 2, state s) || v (1 byte) || session id (16 bytes) || HMAC-SHA256(cookie key v, first 18 bytes)[:15]

A cookie sealed under an older version than the current one, by another master secret, opens with the state
flag `COOKIE_STALE`, so the visit re-seals it under the current key.

IP hash: HMAC-SHA256(ip key, canonical address) (32 bytes) under version 1; ``v || HMAC`` (33 bytes) later.

Encrypted field (``bytea``)::

    key version (1 byte, 1..255) || nonce (12 random bytes) || AES-256-GCM ciphertext || tag (16 bytes)

    associated data = "halo|v1|<tenant>|<table>|<column>|<key version>"

Imports only the standard library and ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import threading
import uuid
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "BLIND_INDEX_KINDS",
    "BLIND_INDEX_BYTES",
    "COOKIE_STALE",
    "COOKIE_TAG_BYTES",
    "MAX_KEY_VERSION",
    "MIN_MASTER_SECRET_BYTES",
    "CryptoError",
    "KeyRing",
    "SignatureError",
    "blob_version",
    "derive_key",
    "generate_master_secret",
    "ip_hash_version",
    "new_session_id",
    "parse_master_secret",
    "parse_previous_secrets",
    "sign_shopify",
    "sign_webhook",
    "verify_shopify",
    "verify_stripe",
    "verify_webhook",
]

MIN_MASTER_SECRET_BYTES = 32
MAX_KEY_VERSION = 255
BLIND_INDEX_KINDS: frozenset[str] = frozenset({"email", "phone"})
BLIND_INDEX_BYTES = 16
COOKIE_TAG_BYTES = 16
WEBHOOK_TOLERANCE_S = 300

# First cookie byte: format 1 in the high nibble, the visitor's state bits (consent as last seen) in the low
# nibble, so a change of consent is noticed without a database read.
_COOKIE_FORMAT = 0x10
_COOKIE_FORMAT_VERSIONED = 0x20
COOKIE_STATE_MAX = 0x0F
# Added to the opened state of a cookie sealed under an older key: never sealed, so it always differs.
COOKIE_STALE = 0x10
_COOKIE_RAW_BYTES = 1 + 16 + COOKIE_TAG_BYTES  # 33 bytes: a multiple of 3, so base64 needs no padding
_COOKIE_CHARS = _COOKIE_RAW_BYTES * 4 // 3  # 44
_COOKIE_RE = re.compile(rf"[A-Za-z0-9_-]{{{_COOKIE_CHARS}}}")
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")

# Opened cookie values and IP hashes are pure functions of (tenant, input): bounded LRU caches per ring spare
# returning visitors the HMAC. Only inputs of the accepted shape are cached, so an entry stays small.
SESSION_CACHE_SIZE = 8192
IP_HASH_CACHE_SIZE = 8192
_IP_MAX_CHARS = 64

_NONCE_BYTES = 12
_GCM_TAG_BYTES = 16

_TENANT_RE = re.compile(r"[a-z0-9_-]{1,64}")
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_B64_RE = re.compile(r"[A-Za-z0-9+/_-]+")

_SIG_T_RE = re.compile(r"[0-9]{1,12}")
_SIG_V1_RE = re.compile(r"[0-9a-fA-F]{64}")
_SIG_HEADER_MAX_CHARS = 4096
_SIG_MAX_V1 = 16


class CryptoError(Exception):
    """Any failure of this module: bad master secret, bad blob, bad signature. Messages never hold secrets."""


class SignatureError(CryptoError):
    """A webhook signature was rejected. `reason` is one of missing | malformed | stale | mismatch."""

    _DETAILS = {
        "missing": "the signature header is missing",
        "malformed": "the signature header is malformed",
        "stale": "the signature timestamp is too far from the current time",
        "mismatch": "the signature does not match the body",
    }

    def __init__(self, reason: str) -> None:
        super().__init__(self._DETAILS[reason])
        self.reason = reason


# --- master secret ------------------------------------------------------------------------------------


def parse_master_secret(text: str) -> bytes:
    """Decode the master secret from hex or base64 (standard or URL-safe, padded or not).

    Text made only of hex digits is read as hex; anything else as base64. Surrounding
    whitespace is ignored. Raises CryptoError when the text decodes to fewer than 32 bytes or is neither
    encoding; the message never contains the text.
    """
    if not isinstance(text, str):
        raise CryptoError("master secret must be text (hex or base64)")
    text = text.strip()
    if not text:
        raise CryptoError("master secret is empty")
    if _HEX_RE.fullmatch(text):
        if len(text) % 2:
            raise CryptoError("master secret looks like hex but has an odd number of digits")
        raw = bytes.fromhex(text)
    else:
        unpadded = text.rstrip("=")
        if not _B64_RE.fullmatch(unpadded) or len(unpadded) % 4 == 1 or len(text) - len(unpadded) > 2:
            raise CryptoError("master secret is neither hex nor base64")
        std = unpadded.encode("ascii").translate(_URLSAFE_TO_STD)
        try:
            raw = base64.b64decode(std + b"=" * (-len(std) % 4), validate=True)
        except binascii.Error:
            raise CryptoError("master secret is neither hex nor base64") from None
    if len(raw) < MIN_MASTER_SECRET_BYTES:
        raise CryptoError(
            f"master secret decodes to {len(raw)} bytes; at least {MIN_MASTER_SECRET_BYTES} are required"
        )
    return raw


def generate_master_secret() -> str:
    """A fresh random 32-byte master secret as unpadded URL-safe base64 (what `parse_master_secret` reads)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


def parse_previous_secrets(text: str, current_version: int) -> dict[int, bytes]:
    """`HALO_PREVIOUS_SECRET_KEYS`: comma-separated ``<version>:<secret>`` entries, each version below the
    current one, none twice. Raises CryptoError naming the entry by its position, never by its secret."""
    found: dict[int, bytes] = {}
    for position, entry in enumerate(filter(None, (e.strip() for e in text.split(","))), 1):
        version_text, sep, secret = entry.partition(":")
        if not sep or not version_text.strip().isdigit():
            raise CryptoError(f"entry {position} is not <version>:<secret>")
        version = int(version_text)
        if not 1 <= version < current_version:
            raise CryptoError(f"entry {position} names key version {version}; previous versions run from 1 to "
                              f"{current_version - 1} (the current version is {current_version})")
        if version in found:
            raise CryptoError(f"entry {position} repeats key version {version}")
        try:
            found[version] = parse_master_secret(secret)
        except CryptoError as err:
            raise CryptoError(f"entry {position} (key version {version}): {err}") from None
    return found


def ip_hash_version(ip_hash: bytes | bytearray | memoryview) -> int:
    """The key version an IP hash was made under: 32 bytes are version 1, otherwise the leading byte."""
    return 1 if len(ip_hash) == 32 else ip_hash[0]


def derive_key(master: bytes, tenant: str, purpose: str) -> bytes:
    """HKDF-SHA256 (no salt) of the master secret with info ``halo|v1|<tenant>|<purpose>``: 32 bytes.

    Purposes used by KeyRing: ``cookie``, ``ip``, ``pii|<version>``, ``bidx|email``, ``bidx|phone``.
    """
    _check_tenant(tenant)
    info = f"halo|v1|{tenant}|{purpose}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def _master_bytes(master: bytes | bytearray | str) -> bytes:
    if isinstance(master, str):
        master = parse_master_secret(master)
    if not isinstance(master, bytes | bytearray) or len(master) < MIN_MASTER_SECRET_BYTES:
        raise CryptoError(f"master secret must be at least {MIN_MASTER_SECRET_BYTES} bytes")
    return bytes(master)


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise CryptoError("tenant id must match [a-z0-9_-]{1,64}")


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise CryptoError(f"{what} name must match [a-z_][a-z0-9_]{{0,62}}")


class RandomBytes:
    """Operating-system randomness drawn 64 KiB at a time.

    Every new visitor needs a session id, an `_fbp` number and AES-GCM nonces: one `getrandom` call each costs
    more than the rest of the work on a sandboxed kernel. These come from one `os.urandom` read per thousands
    of them instead. Each byte is handed out once (a lock guards the offset); a forked child starts empty, so a
    parent and its workers never share bytes.
    """

    def __init__(self, chunk: int = 64 * 1024):
        self._chunk = chunk
        self._buf = b""
        self._pos = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bytes:
        with self._lock:
            pos = self._pos
            end = pos + n
            if end > len(self._buf):
                self._buf = os.urandom(max(self._chunk, n))
                pos, end = 0, n
            self._pos = end
            return self._buf[pos:end]

    def reset(self) -> None:
        with self._lock:
            self._buf = b""
            self._pos = 0


RANDOM = RandomBytes()
os.register_at_fork(after_in_child=RANDOM.reset)


def new_session_id() -> uuid.UUID:
    """A fresh random visitor session id (UUID version 4)."""
    return uuid.UUID(bytes=RANDOM.take(16), version=4)


def random_below(n: int) -> int:
    """A random integer 0 <= x < n for n < 2**32 (the bias of 64 random bits modulo n is below 2**-32)."""
    return int.from_bytes(RANDOM.take(8), "big") % n


def blob_version(blob: bytes | bytearray | memoryview) -> int:
    """The key version an encrypted field was written with (for the rotation job)."""
    if len(blob) < 1 + _NONCE_BYTES + _GCM_TAG_BYTES:
        raise CryptoError("encrypted value is too short")
    return blob[0]


# --- the key ring -------------------------------------------------------------------------------------


class _TenantKeys:
    """One tenant's keys of one version. PII keys are derived on first use of each version."""

    __slots__ = ("version", "cookie_mac", "ip_mac", "blind_macs", "pii")

    def __init__(self, master: bytes, tenant: str, version: int) -> None:
        self.version = version
        # Keyed HMAC objects are copied per call: cheaper than keying a new one each time.
        self.cookie_mac = hmac.new(derive_key(master, tenant, "cookie"), digestmod=hashlib.sha256)
        self.ip_mac = hmac.new(derive_key(master, tenant, "ip"), digestmod=hashlib.sha256)
        self.blind_macs = {
            kind: hmac.new(derive_key(master, tenant, f"bidx|{kind}"), digestmod=hashlib.sha256)
            for kind in sorted(BLIND_INDEX_KINDS)
        }
        self.pii: dict[int, AESGCM] = {}


class KeyRing:
    """All per-tenant keys of every key version, cached per tenant.

    `current_version` is the version everything new is written with; every version from 1 up to it can be
    read, each under its master secret (`previous`; the current one for a version not named there). Rotating
    means constructing the ring with a higher version and a new master secret, the old one in `previous`, and
    re-encrypting (`reencrypt`) and re-keying (`blind_index`, `rekey_ip_hash`) rows written under older ones.
    """

    __slots__ = ("_masters", "_current_version", "_tenants", "_old", "_renewed", "_open_cached", "_hash_ip_cached")

    def __init__(self, master: bytes | str, current_version: int = 1,
                 previous: Mapping[int, bytes | str] | None = None) -> None:
        if (
            not isinstance(current_version, int)
            or isinstance(current_version, bool)
            or not 1 <= current_version <= MAX_KEY_VERSION
        ):
            raise CryptoError(f"key version must be an integer from 1 to {MAX_KEY_VERSION}")
        current = _master_bytes(master)
        masters = {version: current for version in range(1, current_version + 1)}
        for version, secret in (previous or {}).items():
            if type(version) is not int or not 1 <= version < current_version:
                raise CryptoError(f"a previous key version must be from 1 to {current_version - 1}")
            masters[version] = _master_bytes(secret)
        self._masters = masters
        self._current_version = current_version
        # Versions whose master secret differs from the current one: what they sealed must be renewed.
        self._renewed = frozenset(v for v, m in masters.items() if v != current_version and m != current)
        self._tenants: dict[str, _TenantKeys] = {}
        self._old: dict[tuple[str, int], _TenantKeys] = {}
        self._open_cached = functools.lru_cache(maxsize=SESSION_CACHE_SIZE)(self._open_session_state)
        self._hash_ip_cached = functools.lru_cache(maxsize=IP_HASH_CACHE_SIZE)(self._hash_ip)

    def __repr__(self) -> str:
        return f"KeyRing(current_version={self._current_version})"

    @property
    def current_version(self) -> int:
        return self._current_version

    def renewed_versions(self) -> frozenset[int]:
        """The older versions with a master secret of their own (whose blind indexes and IP hashes differ)."""
        return self._renewed

    def _keys(self, tenant: str) -> _TenantKeys:
        keys = self._tenants.get(tenant)
        if keys is None:
            keys = self._tenants[tenant] = _TenantKeys(self._masters[self._current_version], tenant,
                                                       self._current_version)
        return keys

    def _keys_of(self, tenant: str, version: int) -> _TenantKeys:
        """The keys of `version` (1..current): the current ones unless that version has its own master secret."""
        if version not in self._renewed:
            return self._keys(tenant)
        keys = self._old.get((tenant, version))
        if keys is None:
            keys = self._old[(tenant, version)] = _TenantKeys(self._masters[version], tenant, version)
        return keys

    def _aead(self, tenant: str, version: int) -> AESGCM:
        keys = self._keys(tenant)
        aead = keys.pii.get(version)
        if aead is None:
            aead = keys.pii[version] = AESGCM(derive_key(self._masters[version], tenant, f"pii|{version}"))
        return aead

    # --- visitor cookie ---------------------------------------------------------------------------

    new_session_id = staticmethod(new_session_id)

    def seal_session(self, tenant: str, session_id: uuid.UUID, state: int = 0) -> str:
        """The cookie value for a session: opaque, tamper-evident, bound to the tenant.

        `state` (0-15) is carried authenticated alongside the id; HaloTrack keeps the visitor's consent bits there.
        """
        if not isinstance(session_id, uuid.UUID):
            raise CryptoError("session id must be a UUID")
        if type(state) is not int or not 0 <= state <= COOKIE_STATE_MAX:
            raise CryptoError("cookie state must be an integer from 0 to 15")
        version = self._current_version
        if version == 1:
            head = bytes((_COOKIE_FORMAT | state,)) + session_id.bytes
            tag_bytes = COOKIE_TAG_BYTES
        else:
            head = bytes((_COOKIE_FORMAT_VERSIONED | state, version)) + session_id.bytes
            tag_bytes = COOKIE_TAG_BYTES - 1
        mac = self._keys(tenant).cookie_mac.copy()
        mac.update(head)
        return base64.urlsafe_b64encode(head + mac.digest()[:tag_bytes]).decode("ascii")

    def open_session(self, tenant: str, value: object) -> uuid.UUID | None:
        """The session id sealed in a cookie value, or None when the value is not one of ours for this tenant.

        Never raises on any `value` (forged, truncated, another tenant's, garbage, not even a string);
        `tenant` is trusted configuration and an invalid tenant id raises CryptoError like everywhere else.
        """
        opened = self.open_session_state(tenant, value)
        return None if opened is None else opened[0]

    def session_from_ref(self, tenant: str, ref: object) -> uuid.UUID | None:
        """A `session_id` as a body may send it: the `_halo` cookie value exactly as the browser sent it, or the
        public id `HaloTrack.getSessionId()` returns (the session's UUID). None for anything else."""
        if not ref or type(ref) is not str:
            return None
        sealed = self.open_session(tenant, ref)
        if sealed is not None:
            return sealed
        if len(ref) > 36:
            return None
        try:
            return uuid.UUID(ref)
        except ValueError:
            return None

    def open_session_state(self, tenant: str, value: object) -> tuple[uuid.UUID, int] | None:
        """(session id, state bits) sealed in a cookie value, or None; same guarantees as `open_session`."""
        if type(value) is not str or len(value) != _COOKIE_CHARS:
            return None
        if type(tenant) is not str:
            return self._open_session_state(tenant, value)  # raises CryptoError as for any bad tenant
        return self._open_cached(tenant, value)

    def _open_session_state(self, tenant: str, value: str) -> tuple[uuid.UUID, int] | None:
        if not _COOKIE_RE.fullmatch(value):
            return None
        # The regex admits only the URL-safe alphabet and the length leaves no spare bits, so each value
        # decodes to exactly one byte string and each byte string has exactly one accepted encoding.
        raw = binascii.a2b_base64(value.encode("ascii").translate(_URLSAFE_TO_STD))
        form = raw[0] & 0xF0
        if form == _COOKIE_FORMAT:
            version, head = 1, 17
        elif form == _COOKIE_FORMAT_VERSIONED:
            version, head = raw[1], 18
            if not 2 <= version <= self._current_version:
                return None
        else:
            return None
        mac = self._keys_of(tenant, version).cookie_mac.copy()
        mac.update(raw[:head])
        if not hmac.compare_digest(mac.digest()[:_COOKIE_RAW_BYTES - head], raw[head:]):
            return None
        state = raw[0] & COOKIE_STATE_MAX
        return uuid.UUID(bytes=raw[head - 16:head]), state | COOKIE_STALE if version in self._renewed else state

    # --- IP addresses -----------------------------------------------------------------------------

    def hash_ip(self, tenant: str, ip: str) -> bytes:
        """HMAC-SHA256 (32 bytes) of the canonical form of an IP address under the current key; after version 1
        the version byte first (33 bytes).

        IPv4-mapped IPv6 addresses hash like the IPv4 address they carry. Raises CryptoError when `ip` is
        not an address (the message does not repeat it).
        """
        if not isinstance(ip, str):
            raise CryptoError("IP address must be text")
        if type(ip) is str and type(tenant) is str and len(ip) <= _IP_MAX_CHARS:
            return self._hash_ip_cached(tenant, ip)
        return self._hash_ip(tenant, ip)

    def _hash_ip(self, tenant: str, ip: str) -> bytes:
        digest = self._ip_digest(self._keys(tenant), ip)
        return digest if self._current_version == 1 else bytes((self._current_version,)) + digest

    @staticmethod
    def _ip_digest(keys: _TenantKeys, ip: str) -> bytes:
        try:
            addr = ipaddress.ip_address(ip.strip())
        except ValueError:
            raise CryptoError("not an IP address") from None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        mac = keys.ip_mac.copy()
        mac.update(str(addr).encode("ascii"))
        return mac.digest()

    def rekey_ip_hash(self, tenant: str, ip_hash: bytes, ip: str | None) -> bytes | None:
        """An IP hash under the current key version: the same value when it already is, relabelled when its
        version shares the current master secret, else the hash of `ip` (the address decrypted from beside it);
        None when there is no address to hash again (the old key goes, and the hash is worth nothing without it).
        """
        version = ip_hash_version(ip_hash)
        current = self._current_version
        if version == current:
            return bytes(ip_hash)
        if not 1 <= version <= current:
            raise CryptoError(f"unknown key version {version}")
        if version not in self._renewed:
            digest = bytes(ip_hash[-32:])
            return digest if current == 1 else bytes((current,)) + digest
        return self._hash_ip(tenant, ip) if ip is not None else None

    # --- field encryption -------------------------------------------------------------------------

    @staticmethod
    def _aad(tenant: str, table: str, column: str, version: int) -> bytes:
        return f"halo|v1|{tenant}|{table}|{column}|{version}".encode()

    def encrypt(
        self, tenant: str, table: str, column: str, plaintext: str, key_version: int | None = None
    ) -> bytes:
        """AES-256-GCM encryption of one field value, bound to tenant, table, column and key version."""
        if not isinstance(plaintext, str):
            raise CryptoError("only text can be encrypted")
        version = self._current_version if key_version is None else key_version
        if not isinstance(version, int) or not 1 <= version <= self._current_version:
            raise CryptoError(f"key version must be from 1 to {self._current_version}")
        _check_name("table", table)
        _check_name("column", column)
        nonce = RANDOM.take(_NONCE_BYTES)
        sealed = self._aead(tenant, version).encrypt(
            nonce, plaintext.encode("utf-8"), self._aad(tenant, table, column, version)
        )
        return bytes((version,)) + nonce + sealed

    def decrypt(self, tenant: str, table: str, column: str, blob: bytes | bytearray | memoryview) -> str:
        """The plaintext of `encrypt`. Raises CryptoError for a tampered blob, a blob written for another
        tenant, table or column, or a key version this ring does not know."""
        version = blob_version(blob)
        if not 1 <= version <= self._current_version:
            raise CryptoError(f"unknown key version {version}")
        _check_name("table", table)
        _check_name("column", column)
        blob = bytes(blob)
        try:
            data = self._aead(tenant, version).decrypt(
                blob[1 : 1 + _NONCE_BYTES],
                blob[1 + _NONCE_BYTES :],
                self._aad(tenant, table, column, version),
            )
        except InvalidTag:
            raise CryptoError("encrypted value failed authentication") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise CryptoError("encrypted value is not UTF-8 text") from None

    def reencrypt(self, tenant: str, table: str, column: str, blob: bytes | bytearray | memoryview) -> bytes:
        """The blob under the current key version: the same bytes when it already is, a new blob otherwise."""
        if blob_version(blob) == self._current_version:
            self.decrypt(tenant, table, column, blob)  # still prove it belongs here
            return bytes(blob)
        return self.encrypt(tenant, table, column, self.decrypt(tenant, table, column, blob))

    # --- blind indexes ----------------------------------------------------------------------------

    def blind_index(self, tenant: str, kind: str, normalised_value: str) -> bytes:
        """Keyed HMAC-SHA256 of an already normalised value, truncated to 16 bytes, with one key per kind.

        `kind` is ``email`` or ``phone``; normalise first (tracking.identity), this function does not.
        """
        return self._blind(self._keys(tenant), kind, normalised_value)

    def blind_indexes(self, tenant: str, kind: str, normalised_value: str) -> tuple[bytes, ...]:
        """The value's blind index under every key version that can be read, the current one first: what a
        lookup compares with while rows written before a rotation are not yet re-keyed."""
        current = self._blind(self._keys(tenant), kind, normalised_value)
        if not self._renewed:
            return (current,)
        return (current, *(self._blind(self._keys_of(tenant, v), kind, normalised_value)
                           for v in sorted(self._renewed, reverse=True)))

    @staticmethod
    def _blind(keys: _TenantKeys, kind: str, normalised_value: str) -> bytes:
        base = keys.blind_macs.get(kind)
        if base is None:
            raise CryptoError(f"unknown blind index kind; expected one of {sorted(BLIND_INDEX_KINDS)}")
        if not isinstance(normalised_value, str):
            raise CryptoError("blind index value must be text")
        mac = base.copy()
        mac.update(normalised_value.encode("utf-8"))
        return mac.digest()[:BLIND_INDEX_BYTES]


# --- webhook signatures -------------------------------------------------------------------------------


def _secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise CryptoError("webhook secret is empty")
    return bytes(secret)


def _timestamped_mac(secret: bytes, t: str, body: bytes | bytearray | memoryview) -> bytes:
    # The timestamp is signed exactly as it appears in the header.
    mac = hmac.new(secret, t.encode("ascii") + b".", hashlib.sha256)
    mac.update(body)
    return mac.digest()


def sign_webhook(secret: str | bytes, t: int, body: bytes) -> str:
    """The ``X-Halo-Signature`` header value: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.

    Stripe's ``Stripe-Signature`` uses the same scheme, so this also signs test payloads for `verify_stripe`.
    """
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise CryptoError("signature timestamp must be a non-negative integer")
    return f"t={t},v1={_timestamped_mac(_secret_bytes(secret), str(t), body).hex()}"


def _parse_timestamped(header: str | None) -> tuple[str, list[bytes]]:
    if header is None or not isinstance(header, str) or not header.strip():
        raise SignatureError("missing")
    if len(header) > _SIG_HEADER_MAX_CHARS:
        raise SignatureError("malformed")
    t: str | None = None
    candidates: list[bytes] = []
    for item in header.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise SignatureError("malformed")
        if key == "t":
            if t is not None or not _SIG_T_RE.fullmatch(value):
                raise SignatureError("malformed")
            t = value
        elif key == "v1":
            if not _SIG_V1_RE.fullmatch(value):
                raise SignatureError("malformed")
            candidates.append(bytes.fromhex(value))
        # Other schemes (Stripe sends a v0 test signature) are ignored.
    if t is None or not candidates or len(candidates) > _SIG_MAX_V1:
        raise SignatureError("malformed")
    return t, candidates


def verify_webhook(
    secret: str | bytes,
    header: str | None,
    body: bytes | bytearray | memoryview,
    now: float,
    tolerance: float = WEBHOOK_TOLERANCE_S,
) -> None:
    """Check a ``t=<unix>,v1=<hex>[,v1=<hex>...]`` signature over the raw body; any v1 may match.

    The timestamp must be within `tolerance` seconds of `now`, in the past or the future. Raises
    SignatureError with reason missing | malformed | mismatch | stale (checked in that order, so `stale`
    is only reported for an authentic but old or early message).
    """
    key = _secret_bytes(secret)
    t, candidates = _parse_timestamped(header)
    expected = _timestamped_mac(key, t, body)
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("mismatch")
    if abs(now - int(t)) > tolerance:
        raise SignatureError("stale")


def verify_stripe(
    secret: str | bytes,
    header: str | None,
    body: bytes | bytearray | memoryview,
    now: float,
    tolerance: float = WEBHOOK_TOLERANCE_S,
) -> None:
    """Check a ``Stripe-Signature`` header (``t=..,v1=..[,v1=..]``; v0 entries ignored). The secret is the
    endpoint's ``whsec_...`` string as is. Future timestamps are bounded by the same tolerance."""
    verify_webhook(secret, header, body, now, tolerance)


def sign_shopify(secret: str | bytes, body: bytes) -> str:
    """The ``X-Shopify-Hmac-Sha256`` value: base64 of HMAC-SHA256(secret, raw body)."""
    return base64.b64encode(hmac.new(_secret_bytes(secret), body, hashlib.sha256).digest()).decode("ascii")


def verify_shopify(secret: str | bytes, header: str | None, body: bytes | bytearray | memoryview) -> None:
    """Check an ``X-Shopify-Hmac-Sha256`` header. Shopify signs no timestamp: deduplicate on the webhook id."""
    key = _secret_bytes(secret)
    if header is None or not isinstance(header, str) or not header.strip():
        raise SignatureError("missing")
    header = header.strip()
    if len(header) != 44:
        raise SignatureError("malformed")
    try:
        given = base64.b64decode(header, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("malformed") from None
    if len(given) != 32:
        raise SignatureError("malformed")
    if not hmac.compare_digest(hmac.new(key, bytes(body), hashlib.sha256).digest(), given):
        raise SignatureError("mismatch")
