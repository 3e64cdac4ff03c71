"""The dashboard page as data: its query read (`read_query`), and everything the template shows computed from
the report service's `Dashboard` (`page`): stat cards, the daily revenue and conversion charts and the channel
bars as SVG geometry, the sortable table, the latest conversions with their touch paths and each touch's share
under the chosen model. Pure: no I/O, `today` is passed in.

The charts are drawn here, as rectangles in a fixed viewBox, rather than by a charting library: the page carries
no script and no external asset, and a bar chart is a few lines of arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from ..services.reports import Dashboard, RecentConversion, ReportRow
from ..tracking.credit import DEFAULT_MODEL, MODELS
from ..tracking.period import MAX_DAYS, PeriodError, parse_day

DEFAULT_DAYS = 30

MODEL_NAMES: dict[str, tuple[str, str]] = {
    "first_touch": ("First touch", "All credit to the visit that first brought the person."),
    "last_touch": ("Last touch", "All credit to the latest visit with campaign data (else the latest visit)."),
    "last_non_direct": ("Last non-direct", "All credit to the latest visit that did not come direct."),
    "linear": ("Linear", "Equal credit to every visit."),
    "time_decay": ("Time decay", "More credit to recent visits: half as much for each week before the conversion."),
    "position_based": ("Position based", "40 % to the first visit, 40 % to the last, 20 % shared by the rest."),
}
MATCHES = {
    "session": "their own visit (cookie or session id)",
    "email": "their email, linked to an earlier visit",
    "phone": "their phone, linked to an earlier visit",
    "none": "not matched to any visit",
}
COLUMNS = ("source", "medium", "campaign", "channel", "conversions", "revenue")
# The table shows this many rows at most (the CSV has them all): a page stays small and quick to render however
# many campaign names reach the tenant.
MAX_ROWS = 200
_TEXT_COLUMNS = COLUMNS[:4]
_PARAMS = {"from", "to", "model", "sort", "dir"}

# Chart geometry, in viewBox units.
CHART_W, CHART_H, CHART_PAD = 720, 160, 4


class QueryError(PeriodError):
    """A dashboard parameter that cannot be used; `field` names it (as a period's own refusal does)."""


@dataclass(frozen=True, slots=True)
class Query:
    first: date
    last: date
    model: str = DEFAULT_MODEL
    sort: str = "revenue"
    descending: bool = True

    def params(self, **changes: str) -> str:
        """This page's query string with some parameters changed (for links)."""
        values = {"from": self.first.isoformat(), "to": self.last.isoformat(), "model": self.model,
                  "sort": self.sort, "dir": "desc" if self.descending else "asc"}
        values.update(changes)
        return urlencode(values)


def default_query(today: date) -> Query:
    return Query(first=today - timedelta(days=DEFAULT_DAYS - 1), last=today)


def read_query(query: Mapping[str, Sequence[str]], today: date) -> Query:
    """The page's parameters (each at most once), defaults for those left out: the last 30 days up to `today`,
    `last_touch`, by revenue, largest first. QueryError naming the first bad one."""
    for name in sorted(set(query) - _PARAMS):
        raise QueryError(name, f"Unknown parameter {name}.")
    values: dict[str, str] = {}
    for name in sorted(_PARAMS):
        given = list(query.get(name, ()))
        if len(given) > 1:
            raise QueryError(name, f"Send {name} once.")
        if given and given[0] != "":
            values[name] = given[0]
    base = default_query(today)
    try:
        last = parse_day(values["to"], "to") if "to" in values else base.last
        first = parse_day(values["from"], "from") if "from" in values else (
            base.first if "to" not in values else last - timedelta(days=DEFAULT_DAYS - 1))
    except PeriodError as err:
        raise QueryError(err.field, err.detail) from None
    except OverflowError:  # a month before the first day there is
        raise QueryError("to", "to is outside the days that can be reported on.") from None
    if first > last:
        raise QueryError("from", "The first day must not be after the last.")
    if (last - first).days + 1 > MAX_DAYS:
        raise QueryError("to", f"The dashboard covers at most {MAX_DAYS} days.")
    model = values.get("model", DEFAULT_MODEL)
    if model not in MODELS:
        raise QueryError("model", "Unknown attribution model.")
    sort = values.get("sort", "revenue")
    if sort not in COLUMNS:
        raise QueryError("sort", "Unknown column to sort by.")
    direction = values.get("dir", "asc" if sort in _TEXT_COLUMNS else "desc")
    if direction not in ("asc", "desc"):
        raise QueryError("dir", "dir is asc or desc.")
    return Query(first=first, last=last, model=model, sort=sort, descending=direction == "desc")


# -- formatting ----------------------------------------------------------------------------------------------------


def money(value: Decimal | None, currency: str) -> str:
    if value is None:
        return "–"
    rounded = value.quantize(Decimal("0.01"), ROUND_HALF_UP)
    return f"{rounded:,.2f} {currency}".replace(",", "\u202f")


def amount(value: Decimal) -> str:
    """A share of conversions: whole numbers as such, fractions to two places."""
    if value == value.to_integral_value():
        return f"{int(value):,}".replace(",", "\u202f")
    return f"{value.quantize(Decimal('0.01'), ROUND_HALF_UP):,.2f}".replace(",", "\u202f")


def percent(share: float | Decimal) -> str:
    return f"{float(share) * 100:.0f} %"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _local(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M")


# -- charts ----------------------------------------------------------------------------------------------------------


def _nice_top(peak: float) -> float:
    """A round number at or above `peak` for the chart's top line."""
    if peak <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(peak))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if peak <= step * magnitude:
            return step * magnitude
    return 10.0 * magnitude


def day_bars(days: Sequence[date], values: Sequence[float], labels: Sequence[str]) -> dict[str, Any]:
    """Vertical bars, one per day, scaled to a round top; each with its tooltip."""
    top = _nice_top(max(values, default=0.0))
    n = max(len(values), 1)
    slot = (CHART_W - 2 * CHART_PAD) / n
    width = max(slot * 0.8, 1.0)
    bars = []
    for i, (day, value, label) in enumerate(zip(days, values, labels, strict=True)):
        height = 0.0 if value <= 0 else max((CHART_H - 20) * value / top, 1.0)
        bars.append({"x": round(CHART_PAD + i * slot + (slot - width) / 2, 2), "y": round(CHART_H - height, 2),
                     "w": round(width, 2), "h": round(height, 2), "title": f"{day.isoformat()}: {label}"})
    # the first label starts at its bar, the last ends at its own, so neither is cut off at the edge
    anchors = {0: "start", len(days) - 1: "end"}
    ticks = [{"x": round(CHART_PAD + i * slot + (0 if i == 0 else slot if i == len(days) - 1 else slot / 2), 2),
              "label": days[i].strftime("%d %b"), "anchor": anchors.get(i, "middle") if len(days) > 1 else "start"}
             for i in sorted({0, len(days) // 2, len(days) - 1})] if days else []
    return {"w": CHART_W, "h": CHART_H, "bars": bars, "ticks": ticks, "top": top}


BAR_ROW, BAR_LABEL_W = 28, 150


def channel_bars(rows: Sequence[tuple[str, Decimal, str]]) -> dict[str, Any]:
    """Horizontal bars by channel: (channel, value, its label), scaled to the largest value."""
    peak = max((float(r[1]) for r in rows), default=0.0)
    room = CHART_W - BAR_LABEL_W - 2 * CHART_PAD
    bars = []
    for i, (channel, value, label) in enumerate(rows):
        width = room * float(value) / peak if peak > 0 and value > 0 else 0.0
        bars.append({"y": i * BAR_ROW, "w": round(max(width, 0.0), 2), "channel": channel, "label": label,
                     "x": BAR_LABEL_W, "text_x": round(BAR_LABEL_W + min(width, room) + 6, 2)
                     if width < room * 0.6 else round(BAR_LABEL_W + 6, 2), "inside": width >= room * 0.6})
    return {"w": CHART_W, "h": max(len(rows), 1) * BAR_ROW, "bars": bars, "row": BAR_ROW}


# -- the page --------------------------------------------------------------------------------------------------------


def _sorted_rows(rows: Sequence[ReportRow], query: Query) -> list[ReportRow]:
    column = query.sort
    if column in _TEXT_COLUMNS:
        return sorted(rows, key=lambda r: (getattr(r, column).casefold(), -r.revenue, -r.conversions),
                      reverse=query.descending)
    return sorted(rows, key=lambda r: (getattr(r, column), r.revenue, r.conversions), reverse=query.descending)


def _conversion(c: RecentConversion, currency: str, zone: ZoneInfo) -> dict[str, Any]:
    steps = []
    for touch, share in zip(c.touches, c.shares, strict=True):
        steps.append({"source": touch.source, "medium": touch.medium, "campaign": touch.campaign,
                      "channel": touch.channel, "at": _local(touch.at, zone), "share": percent(share),
                      "credited": share > 0})
    return {"at": _local(c.created_at, zone), "kind": c.kind,
            "value": money(c.value, c.currency or currency) if c.value is not None else "no value",
            "match": c.match_type, "match_text": MATCHES.get(c.match_type, c.match_type), "steps": steps}


def page(dashboard: Dashboard, query: Query, *, tenant_id: str, timezone: str, currency: str) -> dict[str, Any]:
    """The template's context (the latest conversions' touch shares are under the query's model)."""
    zone = ZoneInfo(timezone)
    report = dashboard.report
    totals = report.totals
    days = [d.day for d in dashboard.daily]
    revenue_chart = day_bars(days, [float(d.revenue) for d in dashboard.daily],
                             [money(d.revenue, currency) for d in dashboard.daily])
    columns = []
    for column in COLUMNS:
        active = column == query.sort
        # a click on the active column flips it; on another, its natural order (text A-Z, numbers largest first)
        descending = (not query.descending) if active else column not in _TEXT_COLUMNS
        columns.append({"name": column, "active": active, "arrow": ("▼" if query.descending else "▲") if active else "",
                        "href": "?" + query.params(sort=column, dir="desc" if descending else "asc"),
                        "numeric": column not in _TEXT_COLUMNS})
    return {
        "tenant": tenant_id,
        "timezone": timezone,
        "currency": currency,
        "query": query,
        "first": query.first.isoformat(),
        "last": query.last.isoformat(),
        "model": query.model,
        "model_name": MODEL_NAMES[query.model][0],
        "model_help": MODEL_NAMES[query.model][1],
        "models": [{"id": m, "name": MODEL_NAMES[m][0], "help": MODEL_NAMES[m][1], "active": m == query.model,
                    "href": "?" + query.params(model=m)} for m in MODELS],
        "cards": [
            {"label": "Revenue", "value": money(totals.revenue, currency),
             "note": f"in {currency}"},
            {"label": "Conversions", "value": amount(Decimal(totals.conversions)),
             "note": f"{_plural(totals.leads, 'lead')} · {_plural(totals.orders, 'order')}"},
            {"label": "Attribution rate", "value": percent(totals.attribution_rate),
             "note": f"{totals.attributed} matched to a visit"},
            {"label": "Days to convert", "value": "–" if totals.avg_days_to_convert is None
             else f"{totals.avg_days_to_convert:.1f}", "note": "from first visit, on average"},
        ],
        "revenue_chart": revenue_chart,
        "revenue_top": money(Decimal(str(revenue_chart["top"])), currency),
        "conversions_chart": day_bars(days, [float(d.conversions) for d in dashboard.daily],
                                      [f"{_plural(d.conversions, 'conversion')} ({_plural(d.leads, 'lead')}, "
                                       f"{_plural(d.orders, 'order')})"
                                       for d in dashboard.daily]),
        "channels": channel_bars([(c.channel, c.revenue if totals.revenue > 0 else c.conversions,
                                   f"{money(c.revenue, currency)} · {amount(c.conversions)} conv."
                                   ) for c in dashboard.channels]),
        "columns": columns,
        "rows": [{"source": r.source, "medium": r.medium, "campaign": r.campaign, "channel": r.channel,
                  "conversions": amount(r.conversions), "revenue": money(r.revenue, currency)}
                 for r in _sorted_rows(report.rows, query)[:MAX_ROWS]],
        "more_rows": max(len(report.rows) - MAX_ROWS, 0),
        "latest": [_conversion(c, currency, zone) for c in dashboard.latest],
        "csv_href": "dashboard/report.csv?" + urlencode({"from": query.first.isoformat(),
                                                         "to": query.last.isoformat(), "model": query.model}),
    }
