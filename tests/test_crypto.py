"""Key derivation, visitor cookies, IP hashes, PII encryption, blind indexes and webhook signatures.

Expected values are computed independently with the standard library (hmac, hashlib) and the literal HKDF
labels, so a change to any stored format shows up here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from halo_proxy.crypto import (
    BLIND_INDEX_BYTES,
    COOKIE_STALE,
    RANDOM,
    CryptoError,
    KeyRing,
    RandomBytes,
    SignatureError,
    blob_version,
    derive_key,
    generate_master_secret,
    ip_hash_version,
    new_session_id,
    parse_master_secret,
    parse_previous_secrets,
    random_below,
    sign_shopify,
    sign_webhook,
    verify_shopify,
    verify_stripe,
    verify_webhook,
)
from halo_proxy.tracking.identity import normalise_email, normalise_phone

MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(1, 33))
# Bytes whose base64 needs the characters that differ between the standard and URL-safe alphabets.
SECRET_RAW = bytes([0xFB, 0xFF, 0xBF] * 11)[:32]


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 with an empty salt, written out with the standard library."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def hmac256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing(MASTER)


# --- master secret ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        SECRET_RAW.hex(),
        SECRET_RAW.hex().upper(),
        base64.b64encode(SECRET_RAW).decode(),
        base64.b64encode(SECRET_RAW).decode().rstrip("="),
        base64.urlsafe_b64encode(SECRET_RAW).decode(),
        base64.urlsafe_b64encode(SECRET_RAW).decode().rstrip("="),
        "  " + SECRET_RAW.hex() + "\n",
        base64.b64encode(SECRET_RAW).decode() + "\n",
    ],
    ids=["hex", "HEX", "b64", "b64-nopad", "urlsafe", "urlsafe-nopad", "hex-ws", "b64-newline"],
)
def test_parse_master_secret_accepts(text):
    assert parse_master_secret(text) == SECRET_RAW


def test_parse_master_secret_accepts_longer():
    raw = bytes(range(64))
    assert parse_master_secret(raw.hex()) == raw
    assert parse_master_secret(base64.b64encode(raw).decode()) == raw


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        SECRET_RAW.hex()[:62],  # 31 bytes
        SECRET_RAW.hex()[:63],  # odd number of hex digits
        base64.b64encode(SECRET_RAW[:31]).decode(),
        base64.b64encode(SECRET_RAW).decode()[:-5],  # truncated
        "this is not a secret at all, it has spaces",
        "Zm9v!YmFy" * 8,
        base64.b64encode(SECRET_RAW).decode() + "===",
        "é" * 48,
        None,
        b"\x00" * 32,
    ],
)
def test_parse_master_secret_rejects_without_echo(text):
    with pytest.raises(CryptoError) as err:
        parse_master_secret(text)
    message = str(err.value)
    assert message
    if isinstance(text, str) and len(text.strip()) >= 8:
        assert text.strip() not in message
        assert text.strip()[:8] not in message


def test_generate_master_secret_is_parseable_and_random():
    first, second = generate_master_secret(), generate_master_secret()
    assert first != second
    assert len(parse_master_secret(first)) == 32
    assert re.fullmatch(r"[A-Za-z0-9_-]+", first)


@pytest.mark.parametrize(
    "master, version",
    [(MASTER[:31], 1), (MASTER, 0), (MASTER, 256), (MASTER, True), (MASTER, "2"), ("short", 1)],
)
def test_keyring_rejects_bad_construction(master, version):
    with pytest.raises(CryptoError):
        KeyRing(master, current_version=version)


def test_keyring_accepts_text_and_hides_secret():
    ring = KeyRing(MASTER.hex(), current_version=3)
    assert ring.current_version == 3
    assert MASTER.hex() not in repr(ring)
    assert repr(ring) == "KeyRing(current_version=3)"


# --- key derivation -----------------------------------------------------------------------------------

PURPOSES = ["cookie", "ip", "pii|1", "pii|2", "bidx|email", "bidx|phone"]


@pytest.mark.parametrize("tenant", ["acme", "beta-shop", "t_1"])
@pytest.mark.parametrize("purpose", PURPOSES)
def test_derive_key_is_hkdf_sha256_with_the_documented_label(tenant, purpose):
    expected = hkdf_sha256(MASTER, f"halo|v1|{tenant}|{purpose}".encode())
    assert derive_key(MASTER, tenant, purpose) == expected


def test_every_derived_key_is_distinct():
    keys = {
        (master, tenant, purpose): derive_key(master, tenant, purpose)
        for master in (MASTER, OTHER_MASTER)
        for tenant in ("acme", "beta")
        for purpose in PURPOSES
    }
    assert len(set(keys.values())) == len(keys) == 24
    assert all(len(key) == 32 for key in keys.values())


@pytest.mark.parametrize("tenant", ["", "Acme", "a|b", "a" * 65, "acme ", None])
def test_derive_key_rejects_bad_tenant_ids(tenant):
    with pytest.raises(CryptoError):
        derive_key(MASTER, tenant, "cookie")


def test_ring_uses_the_derived_keys(ring):
    sid = uuid.UUID("12345678-1234-4234-8234-123456789abc")
    raw = base64.urlsafe_b64decode(ring.seal_session("acme", sid))
    head = b"\x10" + sid.bytes
    assert raw == head + hmac256(derive_key(MASTER, "acme", "cookie"), head)[:16]
    raw = base64.urlsafe_b64decode(ring.seal_session("acme", sid, state=5))
    head = b"\x15" + sid.bytes
    assert raw == head + hmac256(derive_key(MASTER, "acme", "cookie"), head)[:16]

    assert ring.hash_ip("acme", "192.0.2.1") == hmac256(derive_key(MASTER, "acme", "ip"), b"192.0.2.1")

    for kind in ("email", "phone"):
        expected = hmac256(derive_key(MASTER, "acme", f"bidx|{kind}"), b"value")[:16]
        assert ring.blind_index("acme", kind, "value") == expected

    blob = ring.encrypt("acme", "leads", "email", "alice@example.com")
    aead = AESGCM(derive_key(MASTER, "acme", "pii|1"))
    plain = aead.decrypt(blob[1:13], blob[13:], b"halo|v1|acme|leads|email|1")
    assert plain == b"alice@example.com"


# --- visitor cookie -----------------------------------------------------------------------------------

COOKIE_RE = re.compile(r"[A-Za-z0-9_-]{44}")


@pytest.mark.parametrize(
    "session_id",
    [uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1), uuid.UUID("0b6c7d0e-3f3a-4c55-9a1e-5f0b2c8d9e01")],
    ids=["nil", "max", "v4"],
)
def test_cookie_round_trip(ring, session_id):
    value = ring.seal_session("acme", session_id)
    assert COOKIE_RE.fullmatch(value), value
    assert ring.open_session("acme", value) == session_id
    assert KeyRing(MASTER).open_session("acme", value) == session_id  # survives a restart


@pytest.mark.parametrize("state", range(16))
def test_cookie_carries_authenticated_state(ring, state):
    sid = uuid.UUID("0b6c7d0e-3f3a-4c55-9a1e-5f0b2c8d9e01")
    value = ring.seal_session("acme", sid, state=state)
    assert ring.open_session_state("acme", value) == (sid, state)
    assert ring.open_session("acme", value) == sid


@pytest.mark.parametrize("state", [-1, 16, "1", None, 1.0])
def test_cookie_state_out_of_range_is_refused(ring, state):
    with pytest.raises(CryptoError):
        ring.seal_session("acme", uuid.UUID(int=1), state=state)


def test_new_session_ids_are_random_uuid4(ring):
    ids = {new_session_id() for _ in range(100)} | {ring.new_session_id() for _ in range(100)}
    assert len(ids) == 200
    assert all(sid.version == 4 for sid in ids)
    for sid in ids:
        assert ring.open_session("acme", ring.seal_session("acme", sid)) == sid


def _flip(value: str, index: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = alphabet[(alphabet.index(value[index]) + 1) % len(alphabet)]
    return value[:index] + replacement + value[index + 1 :]


SID = uuid.UUID("0b6c7d0e-3f3a-4c55-9a1e-5f0b2c8d9e01")
GOOD = KeyRing(MASTER).seal_session("acme", SID)


def _reformat(fmt: int) -> str:
    """A cookie with another format byte but a valid tag: must still be refused."""
    head = bytes([fmt]) + SID.bytes
    tag = hmac256(derive_key(MASTER, "acme", "cookie"), head)[:16]
    return base64.urlsafe_b64encode(head + tag).decode()


@pytest.mark.parametrize(
    "value",
    [
        *[_flip(GOOD, i) for i in (0, 2, 10, 22, 30, 42, 43)],
        GOOD[:-1],
        GOOD[:40],
        GOOD[:22],
        GOOD + "A",
        GOOD + "=",
        " " + GOOD,
        f'"{GOOD}"',
        GOOD.swapcase(),
        GOOD.replace("-", "+").replace("_", "/") if ("-" in GOOD or "_" in GOOD) else GOOD[:43] + "+",
        KeyRing(MASTER).seal_session("beta", SID),
        KeyRing(OTHER_MASTER).seal_session("acme", SID),
        _reformat(2),
        _reformat(0),
        str(SID),
        SID.hex,
        "",
        "garbage",
        "A" * 44,
        "=" * 44,
        "é" * 44,
        "\x00" * 44,
        "A" * 10_000,
        None,
        12345,
        GOOD.encode(),
        SID,
        ["list"],
    ],
)
def test_cookie_rejects_forged_truncated_foreign_and_garbage(ring, value):
    assert ring.open_session("acme", value) is None


def test_cookie_of_one_tenant_is_not_valid_for_another(ring):
    value = ring.seal_session("acme", SID)
    assert ring.open_session("acme", value) == SID
    assert ring.open_session("beta", value) is None


def test_seal_requires_a_uuid(ring):
    with pytest.raises(CryptoError):
        ring.seal_session("acme", str(SID))


# --- IP hashes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, second",
    [
        ("192.0.2.1", " 192.0.2.1 "),
        ("192.0.2.1", "::ffff:192.0.2.1"),
        ("2001:db8::1", "2001:0DB8:0000:0000:0000:0000:0000:0001"),
        ("2001:db8::1", "2001:DB8::1"),
    ],
)
def test_hash_ip_uses_the_canonical_form(ring, first, second):
    assert ring.hash_ip("acme", first) == ring.hash_ip("acme", second)
    assert len(ring.hash_ip("acme", first)) == 32


def test_hash_ip_differs_by_address_and_tenant(ring):
    hashes = {
        ring.hash_ip("acme", "192.0.2.1"),
        ring.hash_ip("acme", "192.0.2.2"),
        ring.hash_ip("beta", "192.0.2.1"),
        ring.hash_ip("acme", "2001:db8::1"),
    }
    assert len(hashes) == 4


@pytest.mark.parametrize("ip", ["", "999.1.1.1", "192.0.2", "not-an-ip", "192.0.2.1/24", None, 3232235777])
def test_hash_ip_rejects_non_addresses_without_echo(ring, ip):
    with pytest.raises(CryptoError) as err:
        ring.hash_ip("acme", ip)
    if isinstance(ip, str) and ip:
        assert ip not in str(err.value)


# --- field encryption ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    [
        "alice@example.com",
        "",
        "+420601234567",
        "Příliš žluťoučký kůň úpěl ďábelské ódy",
        "🙂" * 10,
        "x" * 100_000,
    ],
    ids=["email", "empty", "phone", "czech", "emoji", "long"],
)
def test_encrypt_round_trip_and_layout(ring, plaintext):
    blob = ring.encrypt("acme", "leads", "message", plaintext)
    assert blob[0] == 1 == blob_version(blob)
    assert len(blob) == 1 + 12 + len(plaintext.encode()) + 16
    if plaintext:
        assert plaintext.encode() not in blob
    assert ring.decrypt("acme", "leads", "message", blob) == plaintext
    assert ring.decrypt("acme", "leads", "message", bytearray(blob)) == plaintext
    assert ring.decrypt("acme", "leads", "message", memoryview(blob)) == plaintext


def test_encrypt_uses_a_fresh_nonce_each_time(ring):
    blobs = {ring.encrypt("acme", "leads", "email", "alice@example.com") for _ in range(50)}
    assert len(blobs) == 50
    assert len({blob[1:13] for blob in blobs}) == 50


BLOB = KeyRing(MASTER).encrypt("acme", "leads", "email", "alice@example.com")


def _flip_byte(blob: bytes, index: int) -> bytes:
    changed = bytearray(blob)
    changed[index] ^= 0x01
    return bytes(changed)


@pytest.mark.parametrize(
    "blob",
    [
        _flip_byte(BLOB, 0),  # version byte
        _flip_byte(BLOB, 1),  # nonce
        _flip_byte(BLOB, 12),
        _flip_byte(BLOB, 13),  # ciphertext
        _flip_byte(BLOB, 20),
        _flip_byte(BLOB, len(BLOB) - 1),  # tag
        BLOB[:-1],
        BLOB + b"\x00",
        BLOB[:29],
        BLOB[:1],
        b"",
        b"\x01" + bytes(12) + bytes(16),
    ],
    ids=[
        "version",
        "nonce0",
        "nonce11",
        "ct0",
        "ct7",
        "tag",
        "short",
        "long",
        "min-1",
        "one",
        "empty",
        "zeros",
    ],
)
def test_decrypt_rejects_tampered_blobs(ring, blob):
    with pytest.raises(CryptoError):
        ring.decrypt("acme", "leads", "email", blob)


@pytest.mark.parametrize(
    "tenant, table, column",
    [
        ("beta", "leads", "email"),
        ("acme", "orders", "email"),
        ("acme", "leads", "phone"),
        ("acme", "leads", "name"),
    ],
)
def test_decrypt_rejects_blob_moved_to_another_tenant_table_or_column(ring, tenant, table, column):
    with pytest.raises(CryptoError):
        ring.decrypt(tenant, table, column, BLOB)


def test_decrypt_rejects_blob_of_another_master():
    with pytest.raises(CryptoError):
        KeyRing(OTHER_MASTER).decrypt("acme", "leads", "email", BLOB)


@pytest.mark.parametrize(
    "table, column", [("Leads", "email"), ("leads", "e|mail"), ("", "email"), ("leads", None)]
)
def test_encrypt_rejects_bad_names(ring, table, column):
    with pytest.raises(CryptoError):
        ring.encrypt("acme", table, column, "x")


def test_encrypt_rejects_non_text(ring):
    with pytest.raises(CryptoError):
        ring.encrypt("acme", "leads", "email", b"bytes")


def test_blob_version_rejects_short_blobs():
    with pytest.raises(CryptoError):
        blob_version(b"\x01" * 28)


# --- key rotation -------------------------------------------------------------------------------------


def test_rotation_reads_old_versions_and_writes_the_current_one():
    v1, v2 = KeyRing(MASTER), KeyRing(MASTER, current_version=2)
    old = v1.encrypt("acme", "leads", "email", "alice@example.com")
    new = v2.encrypt("acme", "leads", "email", "alice@example.com")
    assert blob_version(old) == 1
    assert blob_version(new) == 2
    assert v2.decrypt("acme", "leads", "email", old) == "alice@example.com"
    assert v2.decrypt("acme", "leads", "email", new) == "alice@example.com"
    with pytest.raises(CryptoError, match="unknown key version"):
        v1.decrypt("acme", "leads", "email", new)


def test_rotation_rewrites_old_blobs():
    v1, v2 = KeyRing(MASTER), KeyRing(MASTER, current_version=2)
    old = v1.encrypt("acme", "leads", "phone", "+420601234567")
    rotated = v2.reencrypt("acme", "leads", "phone", old)
    assert blob_version(rotated) == 2
    assert v2.decrypt("acme", "leads", "phone", rotated) == "+420601234567"
    assert v2.reencrypt("acme", "leads", "phone", rotated) == rotated
    with pytest.raises(CryptoError):
        v2.reencrypt("acme", "leads", "email", old)
    with pytest.raises(CryptoError):
        v2.reencrypt("acme", "leads", "email", rotated)


def test_explicit_key_version():
    v2 = KeyRing(MASTER, current_version=2)
    blob = v2.encrypt("acme", "leads", "email", "a@b.cz", key_version=1)
    assert blob_version(blob) == 1
    assert KeyRing(MASTER).decrypt("acme", "leads", "email", blob) == "a@b.cz"
    for version in (0, 3, 256):
        with pytest.raises(CryptoError):
            v2.encrypt("acme", "leads", "email", "a@b.cz", key_version=version)


def test_relabelled_version_byte_fails():
    """Rewriting a v2 blob's version byte to 1 selects another key and another AAD."""
    v2 = KeyRing(MASTER, current_version=2)
    blob = v2.encrypt("acme", "leads", "email", "alice@example.com")
    with pytest.raises(CryptoError):
        v2.decrypt("acme", "leads", "email", b"\x01" + blob[1:])


def test_version_zero_is_unknown(ring):
    with pytest.raises(CryptoError, match="unknown key version"):
        ring.decrypt("acme", "leads", "email", b"\x00" + BLOB[1:])


# --- blind indexes ------------------------------------------------------------------------------------


def test_blind_index_after_normalisation(ring):
    spelled = ring.blind_index("acme", "email", normalise_email(" Alice@Example.COM "))
    plain = ring.blind_index("acme", "email", normalise_email("alice@example.com"))
    assert spelled == plain
    assert len(plain) == BLIND_INDEX_BYTES == 16
    assert ring.blind_index("acme", "email", "bob@example.com") != plain


def test_blind_index_of_phone_formats(ring):
    values = [normalise_phone("+420 601 234 567", None), normalise_phone("601234567", "CZ")]
    assert len({ring.blind_index("acme", "phone", value) for value in values}) == 1


def test_blind_index_differs_by_kind_and_tenant(ring):
    value = "+420601234567"
    indexes = {
        ring.blind_index("acme", "email", value),
        ring.blind_index("acme", "phone", value),
        ring.blind_index("beta", "phone", value),
        KeyRing(OTHER_MASTER).blind_index("acme", "phone", value),
    }
    assert len(indexes) == 4


@pytest.mark.parametrize("kind", ["ip", "Email", "", "cookie"])
def test_blind_index_rejects_unknown_kinds(ring, kind):
    with pytest.raises(CryptoError):
        ring.blind_index("acme", kind, "x")


# --- webhook signatures -------------------------------------------------------------------------------

SECRET = "whsec_test_secret_0123456789"
BODY = b'{"order_id":"1001","value":1290.5,"currency":"CZK","email":"alice@example.com"}'
T = 1_767_225_600


def reference_v1(secret: str, t: int | str, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


GOOD_V1 = reference_v1(SECRET, T, BODY)
WRONG_V1 = reference_v1("another_secret", T, BODY)


def test_sign_webhook_matches_the_reference():
    assert sign_webhook(SECRET, T, BODY) == f"t={T},v1={GOOD_V1}"
    assert sign_webhook(SECRET.encode(), T, BODY) == f"t={T},v1={GOOD_V1}"


@pytest.mark.parametrize(
    "header, now",
    [
        (f"t={T},v1={GOOD_V1}", T),
        (f"v1={GOOD_V1},t={T}", T),
        (f"t={T}, v1={GOOD_V1}", T),
        (f"t={T},v1={GOOD_V1.upper()}", T),
        (f"t={T},v1={WRONG_V1},v1={GOOD_V1}", T),
        (f"t={T},v1={GOOD_V1}", T + 300),
        (f"t={T},v1={GOOD_V1}", T - 300),
        (f"t={T},v1={GOOD_V1}", T + 299.9),
    ],
    ids=["plain", "reordered", "spaces", "upper-hex", "two-v1", "300s-old", "300s-future", "float-now"],
)
def test_verify_webhook_accepts(header, now):
    verify_webhook(SECRET, header, BODY, now=now)


@pytest.mark.parametrize(
    "header, body, now, reason",
    [
        (None, BODY, T, "missing"),
        ("", BODY, T, "missing"),
        ("   ", BODY, T, "missing"),
        ("garbage", BODY, T, "malformed"),
        (GOOD_V1, BODY, T, "malformed"),
        (f"v1={GOOD_V1}", BODY, T, "malformed"),
        (f"t={T}", BODY, T, "malformed"),
        (f"t={T},v1=", BODY, T, "malformed"),
        (f"t=abc,v1={GOOD_V1}", BODY, T, "malformed"),
        (f"t=-{T},v1={GOOD_V1}", BODY, T, "malformed"),
        (f"t={T}.5,v1={GOOD_V1}", BODY, T, "malformed"),
        (f"t={T},t={T},v1={GOOD_V1}", BODY, T, "malformed"),
        (f"t={T},v1={GOOD_V1[:-2]}", BODY, T, "malformed"),
        (f"t={T},v1={GOOD_V1}zz", BODY, T, "malformed"),
        (f"t={T},v1={GOOD_V1},", BODY, T, "malformed"),
        (f"t={T}," + ",".join([f"v1={WRONG_V1}"] * 17), BODY, T, "malformed"),
        (f"t={T},v1={GOOD_V1}" + " " * 5000, BODY, T, "malformed"),
        (f"t={T},v1={GOOD_V1}", BODY + b" ", T, "mismatch"),
        (f"t={T},v1={GOOD_V1}", b"", T, "mismatch"),
        (f"t={T},v1={WRONG_V1}", BODY, T, "mismatch"),
        (f"t={T + 1},v1={GOOD_V1}", BODY, T, "mismatch"),
        (f"t=0{T},v1={GOOD_V1}", BODY, T, "mismatch"),
        (f"t={T},v1={WRONG_V1},v1={WRONG_V1}", BODY, T, "mismatch"),
        (f"t={T},v1={GOOD_V1}", BODY, T + 301, "stale"),
        (f"t={T},v1={GOOD_V1}", BODY, T + 86_400, "stale"),
        (f"t={T},v1={GOOD_V1}", BODY, T - 301, "stale"),
        (f"t={T},v1={GOOD_V1}", BODY, T - 600, "stale"),
    ],
)
def test_verify_webhook_rejects(header, body, now, reason):
    with pytest.raises(SignatureError) as err:
        verify_webhook(SECRET, header, body, now=now)
    assert err.value.reason == reason
    assert isinstance(err.value, CryptoError)
    assert SECRET not in str(err.value)


def test_verify_webhook_tolerance_is_configurable():
    verify_webhook(SECRET, f"t={T},v1={GOOD_V1}", BODY, now=T + 500, tolerance=600)
    with pytest.raises(SignatureError, match="too far"):
        verify_webhook(SECRET, f"t={T},v1={GOOD_V1}", BODY, now=T + 61, tolerance=60)


@pytest.mark.parametrize("secret", ["", b""])
def test_empty_secret_is_a_configuration_error(secret):
    with pytest.raises(CryptoError) as err:
        verify_webhook(secret, f"t={T},v1={GOOD_V1}", BODY, now=T)
    assert not isinstance(err.value, SignatureError)


# Stripe: same scheme; `whsec_...` is used as the HMAC key as is; v0 entries are test-mode noise.
STRIPE_SECRET = "whsec_5WbX5kEWLlfzsGNjH64I8lOOqUB6e8FH"
STRIPE_BODY = (
    b'{\n  "id": "evt_1", "type": "checkout.session.completed", "data": {"object": {"id": "cs_test_1"}}\n}'
)
STRIPE_T = 1_767_225_600
STRIPE_GOOD = reference_v1(STRIPE_SECRET, STRIPE_T, STRIPE_BODY)
STRIPE_WRONG = reference_v1("whsec_old", STRIPE_T, STRIPE_BODY)


@pytest.mark.parametrize(
    "header, now",
    [
        (f"t={STRIPE_T},v1={STRIPE_GOOD}", STRIPE_T + 5),
        (f"t={STRIPE_T},v1={STRIPE_WRONG},v1={STRIPE_GOOD}", STRIPE_T),
        (f"t={STRIPE_T},v1={STRIPE_GOOD},v1={STRIPE_WRONG}", STRIPE_T),
        (f"t={STRIPE_T},v1={STRIPE_GOOD},v0={STRIPE_WRONG}", STRIPE_T),
        (f"t={STRIPE_T},v1={STRIPE_GOOD}", STRIPE_T + 300),
    ],
    ids=["one", "wrong-then-right", "right-then-wrong", "with-v0", "300s"],
)
def test_verify_stripe_accepts(header, now):
    verify_stripe(STRIPE_SECRET, header, STRIPE_BODY, now=now)


@pytest.mark.parametrize(
    "header, now, reason",
    [
        (None, STRIPE_T, "missing"),
        (f"t={STRIPE_T},v0={STRIPE_GOOD}", STRIPE_T, "malformed"),
        (f"t={STRIPE_T},v1={STRIPE_WRONG}", STRIPE_T, "mismatch"),
        (f"t={STRIPE_T},v1={STRIPE_WRONG},v1={STRIPE_WRONG}", STRIPE_T, "mismatch"),
        (f"t={STRIPE_T},v1={STRIPE_GOOD}", STRIPE_T + 301, "stale"),
        (f"t={STRIPE_T},v1={STRIPE_GOOD}", STRIPE_T - 600, "stale"),
    ],
    ids=["missing", "only-v0", "wrong", "two-wrong", "stale-301s", "future-10min"],
)
def test_verify_stripe_rejects(header, now, reason):
    with pytest.raises(SignatureError) as err:
        verify_stripe(STRIPE_SECRET, header, STRIPE_BODY, now=now)
    assert err.value.reason == reason


# Shopify: base64 HMAC-SHA256 of the raw body, keyed with the app's client secret.
SHOPIFY_SECRET = "shpss_0123456789abcdef0123456789abcdef"
SHOPIFY_BODY = (
    b'{"id":820982911946154508,"email":"jon@example.com","note_attributes":[{"name":"halo_session_id"}]}'
)
SHOPIFY_GOOD = base64.b64encode(hmac256(SHOPIFY_SECRET.encode(), SHOPIFY_BODY)).decode()


def test_sign_shopify_matches_the_reference():
    assert sign_shopify(SHOPIFY_SECRET, SHOPIFY_BODY) == SHOPIFY_GOOD


@pytest.mark.parametrize("header", [SHOPIFY_GOOD, f" {SHOPIFY_GOOD} "])
def test_verify_shopify_accepts(header):
    verify_shopify(SHOPIFY_SECRET, header, SHOPIFY_BODY)


@pytest.mark.parametrize(
    "header, body, reason",
    [
        (None, SHOPIFY_BODY, "missing"),
        ("", SHOPIFY_BODY, "missing"),
        ("not base64 at all!", SHOPIFY_BODY, "malformed"),
        (hmac256(SHOPIFY_SECRET.encode(), SHOPIFY_BODY).hex(), SHOPIFY_BODY, "malformed"),
        (base64.b64encode(b"\x00" * 16).decode(), SHOPIFY_BODY, "malformed"),
        (SHOPIFY_GOOD[:-1] + "!", SHOPIFY_BODY, "malformed"),
        (base64.urlsafe_b64encode(b"\xff" * 32).decode(), SHOPIFY_BODY, "malformed"),
        (SHOPIFY_GOOD, SHOPIFY_BODY + b"\n", "mismatch"),
        (base64.b64encode(hmac256(b"other", SHOPIFY_BODY)).decode(), SHOPIFY_BODY, "mismatch"),
    ],
    ids=["none", "empty", "garbage", "hex", "short", "bad-char", "urlsafe", "body-changed", "other-secret"],
)
def test_verify_shopify_rejects(header, body, reason):
    with pytest.raises(SignatureError) as err:
        verify_shopify(SHOPIFY_SECRET, header, body)
    assert err.value.reason == reason


def test_buffered_randomness_never_repeats_and_refills():
    pool = RandomBytes(chunk=64)  # a tiny buffer: refilled many times below
    draws = [pool.take(12) for _ in range(2000)]
    assert len(set(draws)) == len(draws)
    assert all(len(d) == 12 for d in draws)
    assert len(pool.take(100)) == 100  # larger than the buffer


def test_ids_and_fbp_numbers_from_the_buffer():
    ids = [new_session_id() for _ in range(5000)]
    assert len(set(ids)) == 5000
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in ids)
    numbers = [random_below(9_000_000_000) for _ in range(2000)]
    assert all(0 <= n < 9_000_000_000 for n in numbers)
    assert len(set(numbers)) > 1990


def test_a_forked_child_never_reuses_the_parents_random_bytes():
    RANDOM.take(1)  # the parent has a filled buffer
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes must come from a fresh read
        os.close(read_end)
        os.write(write_end, RANDOM.take(32))
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != RANDOM.take(32)


# --- key versions and rotation ------------------------------------------------------------------------

OTHER_MASTER = bytes(range(100, 132))
SID = uuid.UUID("0b6c7d0e-3f3a-4c55-9a1e-5f0b2c8d9e01")


def test_a_cookie_under_a_later_version_names_its_version_and_keeps_its_length():
    ring = KeyRing(OTHER_MASTER, 3, previous={1: MASTER})
    value = ring.seal_session("acme", SID, state=5)
    assert COOKIE_RE.fullmatch(value)
    raw = base64.urlsafe_b64decode(value)
    head = bytes((0x25, 3)) + SID.bytes
    assert raw == head + hmac256(derive_key(OTHER_MASTER, "acme", "cookie"), head)[:15]
    assert ring.open_session_state("acme", value) == (SID, 5)
    assert KeyRing(OTHER_MASTER, 2).open_session("acme", value) is None  # a version the ring does not know


def test_a_cookie_sealed_under_a_rotated_secret_opens_marked_stale_until_resealed():
    old = KeyRing(MASTER)
    value = old.seal_session("acme", SID, state=3)
    ring = KeyRing(OTHER_MASTER, 2, previous={1: MASTER})
    assert ring.open_session_state("acme", value) == (SID, 3 | COOKIE_STALE)
    assert ring.open_session("acme", value) == SID
    resealed = ring.seal_session("acme", SID, 3)
    assert ring.open_session_state("acme", resealed) == (SID, 3)
    # without the old secret the old cookie is just not ours; the new one still opens
    assert KeyRing(OTHER_MASTER, 2).open_session("acme", value) is None
    assert KeyRing(OTHER_MASTER, 2).open_session_state("acme", resealed) == (SID, 3)
    # a version that shares the current secret is not stale: nothing to renew
    assert KeyRing(MASTER, 2).open_session_state("acme", value) == (SID, 3)


def test_a_versioned_cookie_with_a_forged_version_or_tag_is_refused():
    ring = KeyRing(OTHER_MASTER, 2, previous={1: MASTER})
    raw = bytearray(base64.urlsafe_b64decode(ring.seal_session("acme", SID)))
    for i in (1, 5, 32):
        forged = bytearray(raw)
        forged[i] ^= 1
        assert ring.open_session("acme", base64.urlsafe_b64encode(bytes(forged)).decode()) is None
    for version in (0, 1, 3, 255):  # format 2 names versions from 2 up to the current one
        forged = bytearray(raw)
        forged[1] = version
        assert ring.open_session("acme", base64.urlsafe_b64encode(bytes(forged)).decode()) is None


def test_old_ciphertexts_decrypt_under_their_own_secret_and_reencrypt_under_the_new():
    old = KeyRing(MASTER)
    blob = old.encrypt("acme", "identities", "enc", "a@b.cz")
    ring = KeyRing(OTHER_MASTER, 2, previous={1: MASTER})
    assert ring.decrypt("acme", "identities", "enc", blob) == "a@b.cz"
    new = ring.reencrypt("acme", "identities", "enc", blob)
    assert blob_version(new) == 2 and KeyRing(OTHER_MASTER, 2).decrypt("acme", "identities", "enc", new) == "a@b.cz"
    with pytest.raises(CryptoError):
        KeyRing(OTHER_MASTER, 2).decrypt("acme", "identities", "enc", blob)


def test_blind_indexes_cover_every_readable_version_current_first():
    ring = KeyRing(OTHER_MASTER, 3, previous={1: MASTER})
    current = ring.blind_index("acme", "email", "a@b.cz")
    assert current == KeyRing(OTHER_MASTER).blind_index("acme", "email", "a@b.cz")
    # version 2 shares the current secret, version 1 has its own
    assert ring.blind_indexes("acme", "email", "a@b.cz") == (current, KeyRing(MASTER).blind_index("acme", "email",
                                                                                                   "a@b.cz"))
    assert KeyRing(MASTER, 2).blind_indexes("acme", "email", "a@b.cz") == (KeyRing(MASTER).blind_index(
        "acme", "email", "a@b.cz"),)


def test_ip_hashes_name_their_version_after_the_first():
    v1 = KeyRing(MASTER).hash_ip("acme", "203.0.113.9")
    assert len(v1) == 32 and ip_hash_version(v1) == 1
    ring = KeyRing(OTHER_MASTER, 2, previous={1: MASTER})
    v2 = ring.hash_ip("acme", "203.0.113.9")
    assert v2 == b"\x02" + hmac256(derive_key(OTHER_MASTER, "acme", "ip"), b"203.0.113.9")
    assert ip_hash_version(v2) == 2
    assert ring.rekey_ip_hash("acme", v1, "203.0.113.9") == v2
    assert ring.rekey_ip_hash("acme", v1, None) is None  # nothing to hash again
    assert ring.rekey_ip_hash("acme", v2, None) == v2
    assert KeyRing(MASTER, 2).rekey_ip_hash("acme", v1, None) == b"\x02" + v1  # same secret: relabelled


@pytest.mark.parametrize(("text", "message"), [
    ("1", "entry 1 is not <version>:<secret>"),
    ("x:" + "ab" * 32, "entry 1 is not"),
    ("3:" + "ab" * 32, "entry 1 names key version 3; previous versions run from 1 to 2"),
    ("0:" + "ab" * 32, "names key version 0"),
    ("1:" + "ab" * 32 + ",1:" + "cd" * 32, "entry 2 repeats key version 1"),
    ("1:abc", "entry 1 (key version 1): master secret"),
])
def test_previous_secrets_are_checked_and_never_repeated(text, message):
    with pytest.raises(CryptoError, match=re.escape(message)) as err:
        parse_previous_secrets(text, 3)
    assert "ab" * 32 not in str(err.value)


def test_previous_secrets_parse():
    assert parse_previous_secrets("", 2) == {}
    assert parse_previous_secrets(" 1:" + "ab" * 32 + " , 2:" + "cd" * 32 + ",", 3) == {
        1: bytes.fromhex("ab" * 32), 2: bytes.fromhex("cd" * 32)}
