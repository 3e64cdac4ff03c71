"""A report's period: whole local days of the tenant's time zone, from the first to the last inclusive.

`period("2026-11-01", "2026-11-30", "Europe/Prague")` gives the UTC instants that bound it: `since` (the first
local day's first instant) and `until` (the first instant after the last local day, exclusive), and the start of
each local day for per-day series. Days follow the zone's rules (zoneinfo): a day of a daylight-saving change
lasts 23 or 25 hours, and a day whose midnight the clocks skip starts at its first instant.

Rules: days are `YYYY-MM-DD`; `from` ≤ `to`; at most `MAX_DAYS` days counting both ends. Every refusal is a
`PeriodError` naming the parameter at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["MAX_DAYS", "Period", "PeriodError", "parse_day", "period"]

MAX_DAYS = 400
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class PeriodError(ValueError):
    """A period that cannot be reported on; `field` names the parameter (`from`, `to`)."""

    def __init__(self, field: str, detail: str):
        super().__init__(detail)
        self.field = field
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Period:
    first: date
    last: date
    timezone: str
    since: datetime  # UTC, inclusive
    until: datetime  # UTC, exclusive
    starts: tuple[datetime, ...]  # UTC start of each local day, then `until`: len(days) + 1 instants

    @property
    def days(self) -> tuple[date, ...]:
        return tuple(self.first + timedelta(days=i) for i in range(len(self.starts) - 1))

    def day_of(self, at: datetime) -> date:
        """The local day of an instant."""
        return at.astimezone(ZoneInfo(self.timezone)).date()


def parse_day(text: str, field: str) -> date:
    if not _DAY.match(text):
        raise PeriodError(field, f"{field} must be a day as YYYY-MM-DD.")
    try:
        return date.fromisoformat(text)
    except ValueError as err:
        raise PeriodError(field, f"{field} is not a calendar day.") from err


def _start(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def period(first: str | date, last: str | date, timezone: str, *, max_days: int = MAX_DAYS) -> Period:
    """The period from `first` to `last` (inclusive local days of `timezone`), or PeriodError."""
    start = parse_day(first, "from") if isinstance(first, str) else first
    end = parse_day(last, "to") if isinstance(last, str) else last
    if start > end:
        raise PeriodError("from", "from must not be after to.")
    count = (end - start).days + 1
    if count > max_days:
        raise PeriodError("to", f"A report covers at most {max_days} days; this range has {count}.")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {timezone!r}") from err
    try:
        starts = tuple(_start(start + timedelta(days=i), zone) for i in range(count + 1))
    except OverflowError as err:
        field = "from" if start.year == date.min.year else "to"
        raise PeriodError(field, f"{field} is outside the days that can be reported on.") from err
    return Period(first=start, last=end, timezone=timezone, since=starts[0], until=starts[-1], starts=starts)
