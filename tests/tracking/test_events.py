"""What a valid custom event is: a table."""

from __future__ import annotations

import pytest

from halo_proxy.tracking.conversion import InputError
from halo_proxy.tracking.events import parse_event


@pytest.mark.parametrize(("data", "expected"), [
    ({"name": "add_to_cart"}, ("add_to_cart", None)),
    ({"name": "a", "props": {}}, ("a", "{}")),
    ({"name": "x" + "y" * 63, "props": {"sku": "A-1", "qty": 2, "ok": True}},
     ("x" + "y" * 63, '{"sku":"A-1","qty":2,"ok":true}')),
    ({"name": "video_play", "props": {"title": "Příliš"}}, ("video_play", '{"title":"Příliš"}')),
])
def test_valid_events(data, expected):
    assert parse_event(data) == expected


def test_props_nested_a_thousand_deep_are_refused_without_recursion():
    deep: object = 1
    for _ in range(1000):
        deep = {"d": deep}
    with pytest.raises(InputError) as caught:
        parse_event({"name": "ok", "props": deep})
    assert caught.value.field == "props"
    assert parse_event({"name": "ok", "props": {"a": {"b": [{"c": 1}]}}})[1] == '{"a":{"b":[{"c":1}]}}'


@pytest.mark.parametrize(("data", "code", "field"), [
    ({}, "missing_field", "name"),
    ({"name": ""}, "missing_field", "name"),
    ({"name": "Add"}, "invalid_field", "name"),
    ({"name": "1st"}, "invalid_field", "name"),
    ({"name": "a-b"}, "invalid_field", "name"),
    ({"name": "x" * 65}, "invalid_field", "name"),
    ({"name": 7}, "invalid_field", "name"),
    ({"name": "ok", "props": [1, 2]}, "invalid_field", "props"),
    ({"name": "ok", "props": "text"}, "invalid_field", "props"),
    ({"name": "ok", "props": {"blob": "x" * 2040}}, "invalid_field", "props"),
    ({"name": "ok", "props": {"é": "é" * 1020}}, "invalid_field", "props"),  # counted in bytes, not characters
    ({"name": "ok", "session_id": "s"}, "unknown_field", "session_id"),
    ({"name": "ok", "props": {"x": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}}, "invalid_field", "props"),  # 17 deep
])
def test_invalid_events_name_their_field(data, code, field):
    with pytest.raises(InputError) as caught:
        parse_event(data)
    assert (caught.value.code, caught.value.field) == (code, field)
