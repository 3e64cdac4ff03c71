"""Email and phone normalisation: tables of inputs and the normalised value or the error's field."""

from __future__ import annotations

import pytest

from halo_proxy.tracking.identity import IdentityError, normalise_email, normalise_phone


@pytest.mark.parametrize(
    "text, expected",
    [
        (" Alice@Example.COM ", "alice@example.com"),
        ("alice@example.com", "alice@example.com"),
        ("\tBOB@EXAMPLE.ORG\n", "bob@example.org"),
        ("first.last+tag@sub.example.cz", "first.last+tag@sub.example.cz"),
        ("a@b.co", "a@b.co"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("Jiří@Příklad.CZ", "jiří@příklad.cz"),
        ("a" * 64 + "@" + "b" * 180 + ".com", "a" * 64 + "@" + "b" * 180 + ".com"),
    ],
)
def test_normalise_email(text, expected):
    assert normalise_email(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "alice",
        "alice@",
        "@example.com",
        "alice@example",
        "alice@@example.com",
        "alice@bob@example.com",
        "al ice@example.com",
        "alice@exa mple.com",
        "alice@exa\u00a0mple.com",
        "alice@exa\x00mple.com",
        "alice@.com",
        "alice@example.",
        "alice@example..com",
        "a" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
        None,
        42,
        ["alice@example.com"],
    ],
)
def test_normalise_email_rejects(text):
    with pytest.raises(IdentityError) as err:
        normalise_email(text)
    assert err.value.field == "email"
    assert err.value.detail == str(err.value)
    if isinstance(text, str) and text.strip():
        assert text.strip().lower() not in str(err.value)


@pytest.mark.parametrize(
    "text, region, expected",
    [
        ("+420 601 234 567", None, "+420601234567"),
        ("+420 601 234 567", "US", "+420601234567"),
        ("+420601234567", "CZ", "+420601234567"),
        ("601234567", "CZ", "+420601234567"),
        ("601 234 567", "CZ", "+420601234567"),
        (" 601-234-567 ", "cz", "+420601234567"),
        ("00420 601 234 567", "CZ", "+420601234567"),
        ("(650) 555-1212", "US", "+16505551212"),
        ("650.555.1212", "US", "+16505551212"),
        ("+1 (650) 555-1212", None, "+16505551212"),
        ("+1 650 555 1212", "CZ", "+16505551212"),
        ("+44 20 7946 0018", None, "+442079460018"),
        ("020 7946 0018", "GB", "+442079460018"),
    ],
)
def test_normalise_phone(text, region, expected):
    assert normalise_phone(text, region) == expected


def test_phone_formats_meet_in_one_e164():
    czech = {normalise_phone("+420 601 234 567", None), normalise_phone("601234567", "CZ")}
    american = {normalise_phone("(650) 555-1212", "US"), normalise_phone("+1 650-555-1212", None)}
    assert czech == {"+420601234567"}
    assert american == {"+16505551212"}


@pytest.mark.parametrize(
    "text, region",
    [
        ("601234567", None),  # no country code and no region
        ("601234567", ""),
        ("601234567", "XX"),  # unknown region
        ("abc", "CZ"),
        ("", "CZ"),
        ("   ", "CZ"),
        ("12", "CZ"),  # too short
        ("6012345678901234", "CZ"),  # too long
        ("+420 123 456 789", None),  # possible length, not a valid Czech number
        ("(555) 555-0100", "US"),  # no such area code
        ("+999 601 234 567", None),  # no such country code
        ("1" * 100, "CZ"),
        (None, "CZ"),
        (601234567, "CZ"),
    ],
)
def test_normalise_phone_rejects(text, region):
    with pytest.raises(IdentityError) as err:
        normalise_phone(text, region)
    assert err.value.field == "phone"
    if isinstance(text, str) and text.strip():
        assert text.strip() not in str(err.value)
