"""A report's period (tracking/period.py): local days of the tenant's zone to UTC bounds, daylight-saving days,
and every refusal naming its parameter."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from halo_proxy.tracking.period import MAX_DAYS, PeriodError, period


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_local_days_to_utc_bounds():
    p = period("2026-11-01", "2026-11-02", "Europe/Prague")
    assert (p.since, p.until) == (utc(2026, 10, 31, 23), utc(2026, 11, 2, 23))
    assert p.days == (date(2026, 11, 1), date(2026, 11, 2))
    assert p.starts == (utc(2026, 10, 31, 23), utc(2026, 11, 1, 23), utc(2026, 11, 2, 23))
    # 23:30 UTC on the 1st is the 2nd in Prague
    assert p.day_of(utc(2026, 11, 1, 23, 30)) == date(2026, 11, 2)
    u = period("2026-11-01", "2026-11-01", "UTC")
    assert (u.since, u.until) == (utc(2026, 11, 1), utc(2026, 11, 2))


def test_daylight_saving_days_last_23_and_25_hours():
    spring = period("2026-03-29", "2026-03-29", "Europe/Prague")
    assert (spring.until - spring.since).total_seconds() == 23 * 3600
    autumn = period("2026-10-25", "2026-10-25", "Europe/Prague")
    assert (autumn.until - autumn.since).total_seconds() == 25 * 3600
    # Santiago skips its midnight in September: the day starts at its first instant, 01:00 local
    skipped = period("2026-09-06", "2026-09-06", "America/Santiago")
    assert skipped.since == utc(2026, 9, 6, 4)


def test_at_most_max_days_counting_both_ends():
    assert len(period("2025-01-01", "2026-02-04", "UTC").days) == MAX_DAYS
    with pytest.raises(PeriodError) as err:
        period("2025-01-01", "2026-02-05", "UTC")
    assert err.value.field == "to" and "401" in err.value.detail


@pytest.mark.parametrize("first, last, field", [
    ("2026-11-02", "2026-11-01", "from"),
    ("2026-11-1", "2026-11-30", "from"),
    ("20261101", "2026-11-30", "from"),
    ("2026-11-01", "2026-02-30", "to"),
    ("2026-11-01", "tomorrow", "to"),
    ("2026-11-01T00:00", "2026-11-02", "from"),
    ("0001-01-01", "0001-01-01", "from"),
    ("9999-12-31", "9999-12-31", "to"),
    ("\u0662\u0660\u0662\u0666-11-01", "2026-11-02", "from"),  # Arabic-Indic digits are not YYYY
])
def test_refusals_name_the_parameter(first, last, field):
    with pytest.raises(PeriodError) as err:
        period(first, last, "Europe/Prague")
    assert err.value.field == field
