"""Per-key token buckets for rate limiting browser-facing routes (key: client IP, or tenant and IP).

Each key holds a bucket of at most `burst` tokens that refills at `rate_per_s`; a request takes one token or is
refused with the seconds until one is available (the ``Retry-After``). Time is passed in (``time.monotonic()``
in the app, a number in tests), so the class does no I/O and reads no clock.

Memory stays bounded: keys live in least-recently-used order. A bucket that has refilled completely is
indistinguishable from a new one, so such idle keys are dropped from the old end (at most two per call, keeping
every call O(1)); and when `max_keys` are held, the least recently used key is dropped to make room. Under a
flood of more distinct keys than `max_keys`, a dropped key starts again with a full bucket: the limiter then
errs on the side of letting requests through rather than growing without bound.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["TokenBucket", "retry_after_header"]

_IDLE_EVICTIONS_PER_CALL = 2


class TokenBucket:
    """Token buckets keyed by any hashable value. Not thread-safe: one per event loop."""

    __slots__ = ("rate_per_s", "burst", "max_keys", "_buckets")

    def __init__(self, rate_per_s: float, burst: float, *, max_keys: int = 100_000) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError("rate_per_s must be a positive number")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError("burst must be at least 1")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.max_keys = max_keys
        # key -> [tokens, time of last update]
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buckets

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> tuple[bool, float]:
        """Take `cost` tokens from `key`'s bucket at time `now` (seconds, monotonic).

        Returns ``(True, 0.0)`` when allowed, else ``(False, seconds until the tokens are there)``.
        """
        if not 0 < cost <= self.burst:
            raise ValueError("cost must be positive and at most burst")
        self._evict_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = [self.burst, now]
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0:  # a clock that steps back refills nothing
                bucket[0] = min(self.burst, bucket[0] + elapsed * self.rate_per_s)
                bucket[1] = now
        if bucket[0] >= cost:
            bucket[0] -= cost
            return True, 0.0
        return False, (cost - bucket[0]) / self.rate_per_s

    def wait(self, key: Hashable, now: float) -> float:
        """Seconds until `key` has a whole token, without taking it (0.0 when it has one now)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate_per_s)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate_per_s

    def _evict_idle(self, now: float) -> None:
        buckets = self._buckets
        for _ in range(_IDLE_EVICTIONS_PER_CALL):
            if not buckets:
                return
            key, (tokens, last) = next(iter(buckets.items()))
            if tokens + (now - last) * self.rate_per_s < self.burst:
                return
            del buckets[key]


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
