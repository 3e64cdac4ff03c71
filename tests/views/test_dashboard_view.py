"""The dashboard page as data (views/dashboard.py): its query, the chart geometry and the formatting, as tables."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from halo_proxy.views import render
from halo_proxy.views.dashboard import (
    CHART_H,
    CHART_PAD,
    CHART_W,
    Query,
    QueryError,
    amount,
    channel_bars,
    day_bars,
    money,
    percent,
    read_query,
)

TODAY = date(2026, 12, 1)


@pytest.mark.parametrize(("query", "expected"), [
    ({}, Query(date(2026, 11, 2), TODAY)),
    ({"to": ["2026-10-31"]}, Query(date(2026, 10, 2), date(2026, 10, 31))),
    ({"from": ["2026-11-30"]}, Query(date(2026, 11, 30), TODAY)),
    ({"from": [""], "to": [""], "model": [""]}, Query(date(2026, 11, 2), TODAY)),
    ({"model": ["linear"], "sort": ["source"]}, Query(date(2026, 11, 2), TODAY, "linear", "source", False)),
    ({"sort": ["conversions"], "dir": ["asc"]}, Query(date(2026, 11, 2), TODAY, "last_touch", "conversions", False)),
])
def test_the_query_and_its_defaults(query, expected):
    assert read_query(query, TODAY) == expected


@pytest.mark.parametrize(("query", "field"), [
    ({"from": ["2026-02-30"]}, "from"), ({"to": ["yesterday"]}, "to"),
    ({"from": ["2026-12-02"], "to": ["2026-12-01"]}, "from"), ({"from": ["2025-01-01"]}, "to"),
    ({"model": ["u_shaped"]}, "model"), ({"sort": ["email"]}, "sort"), ({"dir": ["up"]}, "dir"),
    ({"model": ["linear", "first_touch"]}, "model"), ({"tenant": ["other"]}, "tenant"),
])
def test_a_bad_parameter_is_named(query, field):
    with pytest.raises(QueryError) as err:
        read_query(query, TODAY)
    assert err.value.field == field


def test_links_keep_the_other_parameters():
    q = Query(date(2026, 11, 1), date(2026, 11, 30), "linear", "source", False)
    assert q.params(model="first_touch") == "from=2026-11-01&to=2026-11-30&model=first_touch&sort=source&dir=asc"


def test_day_bars_scale_to_a_round_top_and_name_each_day():
    days = [date(2026, 11, d) for d in (1, 2, 3, 4)]
    chart = day_bars(days, [0.0, 370.0, 740.0, 50.0], ["0", "370", "740", "50"])
    assert chart["top"] == 1000
    bars = chart["bars"]
    assert [b["h"] for b in bars] == [0.0, round((CHART_H - 20) * 0.37, 2), round((CHART_H - 20) * 0.74, 2),
                                      round((CHART_H - 20) * 0.05, 2)]
    assert all(b["y"] + b["h"] == pytest.approx(CHART_H) for b in bars)
    assert bars[0]["x"] >= CHART_PAD and bars[-1]["x"] + bars[-1]["w"] <= CHART_W - CHART_PAD
    assert bars[2]["title"] == "2026-11-03: 740"
    assert [(t["label"], t["anchor"]) for t in chart["ticks"]] == [("01 Nov", "start"), ("03 Nov", "middle"),
                                                                   ("04 Nov", "end")]
    empty = day_bars([], [], [])
    assert empty["bars"] == [] and empty["ticks"] == [] and empty["top"] == 1.0


@pytest.mark.parametrize(("peak", "top"), [(0.4, 1), (1, 1), (7, 10), (12, 20), (240, 250), (2600, 5000),
                                           (9999, 10000)])
def test_the_top_line_is_round(peak, top):
    assert day_bars([date(2026, 1, 1)], [float(peak)], [""])["top"] == pytest.approx(top)


def test_channel_bars_are_shares_of_the_largest():
    chart = channel_bars([("Paid Search", Decimal("400"), "a"), ("Email", Decimal("100"), "b"),
                          ("Direct", Decimal("0"), "c")])
    widths = [b["w"] for b in chart["bars"]]
    assert widths[0] > 0 and widths[1] == pytest.approx(widths[0] / 4) and widths[2] == 0
    assert chart["bars"][0]["inside"] and not chart["bars"][1]["inside"]


@pytest.mark.parametrize(("value", "text"), [(Decimal("1234.5"), "1\u202f234.50 CZK"), (Decimal("0"), "0.00 CZK"),
                                             (Decimal("0.005"), "0.01 CZK"), (None, "–")])
def test_money(value, text):
    assert money(value, "CZK") == text


def test_amounts_and_percentages():
    assert (amount(Decimal(3)), amount(Decimal("0.333333")), amount(Decimal("1234"))) == ("3", "0.33", "1\u202f234")
    assert (percent(0.75), percent(Decimal("0.333333")), percent(1)) == ("75 %", "33 %", "100 %")


def test_templates_escape_every_value():
    page = render("login.html", {"tenant": "<b>x</b>", "error": "<script>", "session_hours": 12, "nonce": "n",
                                 "prefix": "/_halo"})
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "<script>" not in page
