"""Normalisation and hashing per platform: tables of inputs and the documented normalised forms."""

from __future__ import annotations

import hashlib

import pytest

from halo_proxy.forwarders import normalize as n


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# Meta's own examples (customer information parameters page): input -> normalised form.
META_DOC_EXAMPLES = [
    (n.meta_email, "John_Smith@gmail.com", "john_smith@gmail.com"),
    (lambda raw: n.meta_phone(raw, "US"), "(650)555-1212", "16505551212"),
    (n.meta_city, "New York", "newyork"),
    (n.meta_state, "CA", "ca"),
    (lambda raw: n.meta_zip(raw, "US"), "94035-1234", "94035"),
    (n.meta_country, "US", "us"),
]


@pytest.mark.parametrize("normalise, raw, expected", META_DOC_EXAMPLES)
def test_meta_documented_examples_normalise_and_hash(normalise, raw, expected):
    assert normalise(raw) == expected
    assert n.hashed(normalise, raw) == sha(expected)


def test_meta_hashes_are_the_documented_digests():
    # Spelled out once, so a change in hashlib use or encoding cannot hide behind the helper above.
    assert n.hashed(n.meta_email, "John_Smith@gmail.com") == (
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f")
    assert n.hashed(lambda raw: n.meta_phone(raw, "US"), "(650)555-1212") == sha("16505551212")
    assert n.hashed(n.meta_city, "New York") == sha("newyork")
    assert n.hashed(n.meta_state, "CA") == sha("ca")
    assert n.hashed(lambda raw: n.meta_zip(raw, "US"), "94035-1234") == sha("94035")
    assert n.hashed(n.meta_country, "US") == sha("us")


@pytest.mark.parametrize(
    "normalise, raw, expected",
    [
        (n.meta_email, "  Alice@Example.COM ", "alice@example.com"),
        (n.meta_email, "not-an-email", None),
        (n.meta_phone, "+420 601 234 567", "420601234567"),
        (n.meta_phone, "00420601234567", "420601234567"),
        (n.meta_phone, "601 234 567", None),  # no country code, no region
        (lambda raw: n.meta_phone(raw, "CZ"), "601 234 567", "420601234567"),
        (lambda raw: n.meta_phone(raw, "GB"), "07700 900123", "447700900123"),  # leading zero dropped
        (n.meta_phone, "call me", None),
        (n.meta_name, "  Mary-Jane ", "maryjane"),
        (n.meta_name, "Valéry", "valéry"),
        (n.meta_name, "O'Brien", "obrien"),
        (n.meta_name, "...", None),
        (n.meta_city, "St. Louis 2", "stlouis"),
        (n.meta_city, "Praha", "praha"),
        (n.meta_state, "Île-de-France", "îledefrance"),
        (lambda raw: n.meta_zip(raw, "GB"), "M1 1AE", "m11ae"),
        (lambda raw: n.meta_zip(raw, "CZ"), "110 00", "11000"),
        (lambda raw: n.meta_zip(raw, None), "94035-1234", "94035"),
        (lambda raw: n.meta_zip(raw, "us"), "94035", "94035"),
        (n.meta_country, " cz ", "cz"),
        (n.meta_country, "CZE", None),
        (n.meta_external_id, " Customer-42 ", "customer-42"),
    ],
)
def test_meta_normalisers(normalise, raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("John.Smith+ads@Gmail.com", "johnsmith@gmail.com"),
        (" jane.doe@googlemail.com ", "janedoe@googlemail.com"),
        ("John.Smith+ads@example.com", "john.smith+ads@example.com"),
        ("A B@Example.com", "ab@example.com"),
        ("+tag@gmail.com", None),
        ("nobody", None),
    ],
)
def test_google_email(raw, expected):
    assert n.google_email(raw) == expected


@pytest.mark.parametrize(
    "raw, region, expected",
    [
        ("(650)555-1212", "US", "+16505551212"),
        ("+1 650 555 1212", None, "+16505551212"),
        ("+420601234567", None, "+420601234567"),
        ("601234567", "cz", "+420601234567"),
        ("601234567", None, None),
        ("12", "US", None),
        ("", "US", None),
        ("9" * 80, "US", None),
    ],
)
def test_e164_phone(raw, region, expected):
    assert n.e164_phone(raw, region) == expected


@pytest.mark.parametrize(
    "normalise, raw, expected",
    [
        (n.tiktok_email, " Bob@Example.org ", "bob@example.org"),
        (n.tiktok_external_id, " ABC-1 ", "abc-1"),
    ],
)
def test_tiktok_normalisers(normalise, raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize("normalise", [n.meta_email, n.google_email, n.meta_city, n.tiktok_external_id])
def test_already_hashed_values_pass_through_lowercased(normalise):
    digest = sha("someone@example.com")
    assert n.hashed(normalise, digest) == digest
    assert n.hashed(normalise, digest.upper()) == digest


def test_hashed_handles_missing_and_unusable_values():
    assert n.hashed(n.meta_email, None) is None
    assert n.hashed(n.meta_country, "Czechia") is None


@pytest.mark.parametrize(
    "value, expected",
    [(sha("x"), True), (sha("x").upper(), True), (sha("x")[:-1], False), ("g" * 64, False), (None, False)],
)
def test_is_sha256_hex(value, expected):
    assert n.is_sha256_hex(value) is expected
