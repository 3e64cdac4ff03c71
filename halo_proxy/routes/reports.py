"""`GET /_halo/report` (scope `report`): the attribution report of a period as JSON or CSV.

Parameters: `from`, `to` (`YYYY-MM-DD`, inclusive local days of the tenant's `timezone`, at most 400 days,
`from` ≤ `to`), `model` (tracking/credit.py MODELS, default `last_touch`), `format` (`json`, default, or `csv`).
The key is checked first (401/403 as every operator route); then any parameter that is missing, malformed,
unknown, out of range or sent twice is a 422 naming it.

Numbers: JSON carries conversions and revenue as numbers (the exact decimal sums as floats); CSV carries the exact
decimals as written (revenue with two decimals unless a value had more). CSV cells holding text that starts with
`=`, `+`, `-`, `@`, a tab or a carriage return are prefixed with `'`, so a spreadsheet shows a campaign named
`=HYPERLINK(...)` as text instead of running it (OWASP's advice on CSV injection); numbers are never prefixed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from ..config import Settings, Tenant
from ..services.reports import Report, Reports
from ..tracking.credit import DEFAULT_MODEL, MODELS
from ..tracking.period import PeriodError
from .common import ApiError, handler_for, json_ok
from .operators import Guard

FORMATS = ("json", "csv")
PARAMETERS = ("from", "to", "model", "format")
CSV_HEADER = ("source", "medium", "campaign", "channel", "conversions", "revenue")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CENT = Decimal("0.01")


class ReportRoutes:
    def __init__(self, reports: Reports, guard: Guard):
        self.reports = reports
        self.guard = guard

    async def report(self, request: web.Request, tenant: Tenant, settings: Settings,
                     client_ip: str | None) -> web.StreamResponse:
        self.guard.require(request, settings, tenant, client_ip, "report")
        query = single_parameters(request, PARAMETERS)
        for name in ("from", "to"):
            if name not in query:
                raise ApiError(422, "missing_field", f"Send {name} as YYYY-MM-DD.", name)
        model = query.get("model", DEFAULT_MODEL)
        if model not in MODELS:
            raise ApiError(422, "invalid_field", f"model must be one of {', '.join(MODELS)}.", "model")
        kind = query.get("format", "json")
        if kind not in FORMATS:
            raise ApiError(422, "invalid_field", "format must be json or csv.", "format")
        try:
            period = self.reports.period(tenant, query["from"], query["to"])
        except PeriodError as err:
            raise ApiError(422, "invalid_field", err.detail, err.field) from err
        report = await self.reports.report(tenant, period, model)
        if kind == "csv":
            name = f"halotrack-{tenant.id}-{period.first}-{period.last}-{model}.csv"
            return web.Response(body=report_csv(report).encode("utf-8"),
                                headers={"Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
                                         "Content-Disposition": f'attachment; filename="{name}"',
                                         "X-Content-Type-Options": "nosniff"})
        return json_ok(200, report_json(report), headers={"Cache-Control": "no-store"})


def single_parameters(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters, each known and sent once, else 422 naming the first at fault."""
    query = request.query
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise ApiError(422, "unknown_field", f"Unknown parameter {unknown[0]}; send {', '.join(allowed)}.",
                       unknown[0])
    for name in allowed:
        if len(query.getall(name, ())) > 1:
            raise ApiError(422, "invalid_field", f"Send {name} once.", name)
    return {name: query[name] for name in allowed if name in query}


def report_json(report: Report) -> dict[str, Any]:
    """The contract's JSON shape of a report."""
    t = report.totals
    return {
        "tenant": report.tenant,
        "from": report.period.first.isoformat(),
        "to": report.period.last.isoformat(),
        "timezone": report.period.timezone,
        "model": report.model,
        "currency": report.currency,
        "totals": {"conversions": t.conversions, "leads": t.leads, "orders": t.orders, "revenue": float(t.revenue),
                   "attributed": t.attributed, "attribution_rate": t.attribution_rate,
                   "avg_days_to_convert": t.avg_days_to_convert},
        "rows": [{"source": r.source, "medium": r.medium, "campaign": r.campaign, "channel": r.channel,
                  "conversions": float(r.conversions), "revenue": float(r.revenue)} for r in report.rows],
    }


def _text_cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _number(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def _money(value: Decimal) -> str:
    return format(value.quantize(_CENT), "f") if value == value.quantize(_CENT) else _number(value)


def report_csv(report: Report) -> str:
    """The contract's CSV: the header, then one line per row (RFC 4180 quoting, CRLF line ends)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for r in report.rows:
        writer.writerow([_text_cell(r.source), _text_cell(r.medium), _text_cell(r.campaign), _text_cell(r.channel),
                         _number(r.conversions), _money(r.revenue)])
    return out.getvalue()


def setup(app: web.Application, prefix: str, routes: Callable[[], ReportRoutes | None],
          settings: Callable[[], Settings]) -> None:
    app.router.add_get(f"{prefix}/report", handler_for(ReportRoutes.report, routes, settings))
