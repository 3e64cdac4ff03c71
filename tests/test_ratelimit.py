"""Token bucket: burst, refill, Retry-After, per-key independence and bounded memory. Time is a plain number."""

from __future__ import annotations

import pytest

from halo_proxy.ratelimit import TokenBucket, retry_after_header


def takes(bucket, key, times):
    """Outcome of each (time) in `times` for `key`."""
    return [bucket.take(key, now) for now in times]


@pytest.mark.parametrize(
    "rate, burst, times, expected",
    [
        pytest.param(1, 3, [0, 0, 0, 0], [(True, 0.0)] * 3 + [(False, 1.0)], id="burst-then-refused"),
        pytest.param(
            1, 3, [0, 0, 0, 0, 1], [(True, 0.0)] * 3 + [(False, 1.0), (True, 0.0)], id="one-token-per-second"
        ),
        pytest.param(
            2,
            1,
            [0, 0, 0.25, 0.5],
            [(True, 0.0), (False, 0.5), (False, 0.25), (True, 0.0)],
            id="retry-after-shrinks-as-tokens-refill",
        ),
        pytest.param(10, 5, [0] * 5 + [0], [(True, 0.0)] * 5 + [(False, 0.1)], id="fast-rate"),
        pytest.param(
            1,
            2,
            [0, 0, 100, 100, 100],
            [(True, 0.0)] * 2 + [(True, 0.0)] * 2 + [(False, 1.0)],
            id="refill-caps-at-burst",
        ),
        pytest.param(0.5, 1, [0, 1], [(True, 0.0), (False, 1.0)], id="slow-rate"),
        pytest.param(
            1,
            1,
            [10, 9, 9.5],
            [(True, 0.0), (False, 1.0), (False, 1.0)],
            id="clock-stepping-back-refills-nothing",
        ),
    ],
)
def test_take(rate, burst, times, expected):
    bucket = TokenBucket(rate, burst)
    results = takes(bucket, "1.2.3.4", times)
    assert [allowed for allowed, _ in results] == [allowed for allowed, _ in expected]
    assert [retry for _, retry in results] == pytest.approx([retry for _, retry in expected])


def test_keys_are_independent():
    bucket = TokenBucket(1, 1)
    assert bucket.take("a", 0)[0] is True
    assert bucket.take("a", 0)[0] is False
    assert bucket.take("b", 0)[0] is True
    assert bucket.take(("acme", "a"), 0)[0] is True


def test_cost():
    bucket = TokenBucket(1, 5)
    assert bucket.take("k", 0, cost=4) == (True, 0.0)
    allowed, retry = bucket.take("k", 0, cost=3)
    assert allowed is False and retry == pytest.approx(2.0)


@pytest.mark.parametrize("cost", [0, -1, 6])
def test_cost_out_of_range(cost):
    with pytest.raises(ValueError):
        TokenBucket(1, 5).take("k", 0, cost=cost)


@pytest.mark.parametrize(
    "rate, burst, max_keys",
    [
        (0, 1, 10),
        (-1, 1, 10),
        (float("inf"), 1, 10),
        (float("nan"), 1, 10),
        (1, 0.5, 10),
        (1, float("inf"), 10),
        (1, 1, 0),
    ],
)
def test_bad_settings(rate, burst, max_keys):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, max_keys=max_keys)


def test_idle_keys_are_evicted():
    bucket = TokenBucket(1, 2)
    for i in range(10):
        bucket.take(f"ip{i}", 0)
    assert len(bucket) == 10
    # After 2 s every bucket has refilled; each call drops up to two idle keys from the old end.
    for step in range(10):
        bucket.take("fresh", 2 + step * 0.001)
    assert len(bucket) == 1
    assert "fresh" in bucket


def test_active_keys_are_not_evicted_as_idle():
    bucket = TokenBucket(1, 5)
    for _ in range(5):
        bucket.take("busy", 0)
    bucket.take("other", 1)  # "busy" has 1 of 5 tokens back: not idle
    assert "busy" in bucket
    assert bucket.take("busy", 1)[0] is True
    assert bucket.take("busy", 1)[0] is False


def test_lru_eviction_at_capacity():
    bucket = TokenBucket(1, 1, max_keys=3)
    for key in ("a", "b", "c"):
        bucket.take(key, 0)
    bucket.take("a", 0.5)  # refused, but "a" is now the most recently used
    bucket.take("d", 0.5)  # full: "b", the least recently used, goes
    assert len(bucket) == 3
    assert "b" not in bucket
    assert {"a", "c", "d"} == {k for k in ("a", "b", "c", "d") if k in bucket}
    # "a" kept its state: still refused
    assert bucket.take("a", 0.6)[0] is False


def test_memory_stays_bounded_under_a_flood_of_keys():
    bucket = TokenBucket(1, 1, max_keys=1000)
    for i in range(10_000):
        bucket.take(i, i * 0.0001)
    assert len(bucket) == 1000


@pytest.mark.parametrize(
    "seconds, header",
    [(0.0, "1"), (0.01, "1"), (1.0, "1"), (1.2, "2"), (59.5, "60")],
)
def test_retry_after_header(seconds, header):
    assert retry_after_header(seconds) == header
