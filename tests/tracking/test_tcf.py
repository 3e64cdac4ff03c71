import pytest

from halo_proxy.tracking.tcf import decode_tc_string
from tests.tracking.tcf_builder import build_core

# Public example strings with their documented decoded values.
IAB_SPEC_EXAMPLE = (
    "COvFyGBOvFyGBAbAAAENAPCAAOAAAAAAAAAAAEEUACCKAAA.IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAA"
    "gAAAAAAAFAAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw"
)
BITFIELD_EXAMPLE = "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA"
RANGE_EXAMPLE = "COyfVVoOyfVVoADACHENAwCAAAAAAAAAAAAAE5QBgALgAqgD8AQACSwEygJyAnSAMABgAFkAgQCDASeAmYBOgAA"


def test_iab_specification_example():
    tc = decode_tc_string(IAB_SPEC_EXAMPLE)
    assert tc is not None
    assert tc.version == 2
    assert tc.created_ds == tc.last_updated_ds == 15822430593  # 2020-02-20T23:57:39.3Z
    assert (tc.cmp_id, tc.cmp_version, tc.consent_language, tc.vendor_list_version) == (27, 0, "EN", 15)
    assert tc.tcf_policy_version == 2
    assert tc.is_service_specific is False
    assert tc.purposes_consent == {1, 2, 3}
    assert tc.purposes_li == frozenset()
    assert tc.publisher_cc == "AA"
    assert (tc.analytics, tc.marketing) == (False, False)


def test_bitfield_example_with_li_bits():
    tc = decode_tc_string(BITFIELD_EXAMPLE)
    assert tc is not None
    assert (tc.created_ds, tc.last_updated_ds) == (12286442577, 13262154134)
    assert (tc.cmp_id, tc.cmp_version, tc.vendor_list_version, tc.publisher_cc) == (21, 7, 23, "KM")
    assert tc.is_service_specific is True
    assert tc.purposes_consent == {1, 3, 9, 10}
    assert tc.purposes_li == {3, 4, 5, 8, 9, 10}
    # C1 and LI8 -> analytics; C4 missing -> no marketing
    assert (tc.analytics, tc.marketing) == (True, False)


def test_range_example_without_purposes():
    tc = decode_tc_string(RANGE_EXAMPLE)
    assert tc is not None
    assert (tc.cmp_id, tc.cmp_version, tc.vendor_list_version) == (3, 2, 48)
    assert tc.purposes_consent == frozenset() and tc.purposes_li == frozenset()


@pytest.mark.parametrize(
    ("consent", "li", "analytics", "marketing"),
    [
        pytest.param({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, set(), True, True, id="accept-all"),
        pytest.param(set(), set(), False, False, id="reject-all"),
        pytest.param({1}, {2, 7, 8, 9, 10}, True, False, id="store-only-plus-li"),
        pytest.param({1, 3, 4}, {7}, False, True, id="ads-by-li7-no-c8"),
        pytest.param({1, 8}, set(), True, False, id="measurement-only"),
        pytest.param({3, 4, 7, 8}, set(), False, False, id="no-purpose-1"),
        pytest.param({1, 3, 7, 8}, set(), True, False, id="missing-c4"),
    ],
)
def test_constructed_strings(consent, li, analytics, marketing):
    tc = decode_tc_string(build_core(purposes_consent=consent, purposes_li=li))
    assert tc is not None
    assert tc.purposes_consent == consent
    assert tc.purposes_li == li
    assert (tc.analytics, tc.marketing) == (analytics, marketing)


def test_constructed_fields_round_trip():
    value = build_core(
        created_ds=17_123_456_789,
        last_updated_ds=17_223_456_789,
        cmp_id=4095,
        cmp_version=123,
        language="CS",
        vendor_list_version=321,
        policy_version=5,
        publisher_cc="CZ",
    )
    tc = decode_tc_string(value + ".YAAAAAAAAXA")
    assert tc is not None
    assert (tc.created_ds, tc.last_updated_ds) == (17_123_456_789, 17_223_456_789)
    assert (tc.cmp_id, tc.cmp_version, tc.consent_language) == (4095, 123, "CS")
    assert (tc.vendor_list_version, tc.tcf_policy_version, tc.publisher_cc) == (321, 5, "CZ")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("hello world", id="text"),
        pytest.param("BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA", id="tcf-v1"),
        pytest.param(build_core(version=3), id="version-3"),
        pytest.param("CPXxRfAPXxRfA", id="truncated"),
        pytest.param("C" * 10_000, id="oversized"),
        pytest.param("CO+v/FyGB==", id="not-base64url"),
        pytest.param("A", id="one-char"),
        pytest.param(".IFoEUQQgAIQwgIwQ", id="no-core"),
        pytest.param("COvFyGBOvFyGBAbAAAENAPCAAOAAAAAAAAAAAEEUACCKAAA\u00e9", id="non-ascii"),
    ],
)
def test_malformed_strings(value):
    assert decode_tc_string(value) is None
