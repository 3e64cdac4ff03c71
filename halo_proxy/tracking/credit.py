"""Attribution models: how one conversion's credit is shared among the touches stored with it.

The six models of the report (`GET /_halo/report`), each a pure function of the conversion's eligible touches
(oldest first, as `attribution_record` stores them: already restricted to `attribution.lookback_days`), its time
and its value:

- `first_touch`: all to the first touch.
- `last_touch`: all to the attribution's own last touch: the latest touch that carries campaign data (UTM, click
  id, external referrer), else the latest (`attribution.last_touch_of`). So the report credits the very touch the
  conversion's answer named as `last_touch` and that its forwards carried, not merely the latest page view.
- `last_non_direct`: all to the latest touch whose channel is not Direct; to the latest touch (Direct) when every
  touch is Direct.
- `linear`: equal shares.
- `time_decay`: each touch weighs 2^(-age / 7 days), its age taken at the conversion's time (the time the
  attribution was made for: `occurred_at`); a touch is never younger than 0.
- `position_based`: 40 % to the first touch, 40 % to the last, the remaining 20 % shared equally by the touches
  between; one touch takes 100 %, two take 50 % each.

Credits go to touch keys (source, medium, campaign, channel): two touches of one key make one credit, a missing
source, medium or campaign reads `(not set)`. A conversion without touches (unmatched, or matched with every touch
outside the lookback window) is one credit to the key `(none)`/`(none)`/`(none)`/`Unattributed`.

Exact sums. Shares are exact fractions (time decay's float weights are taken exactly as fractions) and become
whole units by the largest-remainder method: a conversion's credits sum to exactly 1 in millionths
(`CONVERSION_UNIT`), and to exactly its value in cents (in ten-thousandths for a value with more than two decimals,
the four a stored value can carry). A tie of remainders goes to the key seen first. No float ever touches the
stored numbers, so report rows, which are sums of these decimals, add up exactly to the report's totals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from halo_proxy.tracking.attribution import last_touch_of
from halo_proxy.tracking.channel import DIRECT
from halo_proxy.tracking.models import Touch

__all__ = [
    "CONVERSION_UNIT",
    "CREDIT_VERSION",
    "DEFAULT_MODEL",
    "HALF_LIFE_DAYS",
    "MODELS",
    "NOT_SET",
    "UNATTRIBUTED",
    "UNATTRIBUTED_KEY",
    "Credit",
    "TouchKey",
    "credit",
    "credit_models",
    "shares",
    "touch_key",
]

MODELS: tuple[str, ...] = (
    "first_touch", "last_touch", "last_non_direct", "linear", "time_decay", "position_based",
)
DEFAULT_MODEL = "last_touch"
# The version of these rules that stored credits were computed with (conversions.credits_version); a change of
# the rules that alters stored credits bumps it, and a migration marks older rows for re-crediting.
CREDIT_VERSION = 1
HALF_LIFE_DAYS = 7
_HALF_LIFE_S = HALF_LIFE_DAYS * 86400

CONVERSION_UNIT = Decimal("0.000001")
_CONVERSION_UNITS = 1_000_000
_CENT = Decimal("0.01")
_FINEST = Decimal("0.0001")  # conversions.value is numeric(18, 4)

NONE = "(none)"
NOT_SET = "(not set)"
UNATTRIBUTED = "Unattributed"


@dataclass(frozen=True, slots=True, order=True)
class TouchKey:
    """What a report row is: the touch's source, medium, campaign and channel."""

    source: str
    medium: str
    campaign: str
    channel: str


UNATTRIBUTED_KEY = TouchKey(NONE, NONE, NONE, UNATTRIBUTED)


@dataclass(frozen=True, slots=True)
class Credit:
    """One key's share of a conversion: of the conversion itself (a fraction of 1) and of its value."""

    key: TouchKey
    conversions: Decimal
    revenue: Decimal


def touch_key(touch: Touch) -> TouchKey:
    return TouchKey(touch.source or NOT_SET, touch.medium or NOT_SET, touch.campaign or NOT_SET,
                    touch.channel or DIRECT)


def _one(n: int, index: int) -> tuple[Fraction, ...]:
    return tuple(Fraction(1) if i == index else Fraction(0) for i in range(n))


def _last_index(touches: Sequence[Touch], last_touch: Touch | None) -> int:
    """Where the last touch is: the attribution's own when given and among the touches, else the rule's."""
    for chosen in (last_touch, last_touch_of(touches)):
        if chosen is None:
            continue
        for i in range(len(touches) - 1, -1, -1):
            if touches[i] == chosen:
                return i
    return len(touches) - 1


def shares(model: str, touches: Sequence[Touch], converted_at: datetime,
           last_touch: Touch | None = None) -> tuple[Fraction, ...]:
    """Each touch's exact share of the conversion under `model` (they sum to 1; empty for no touches).
    `last_touch` is the attribution's own last touch when known (`Attribution.last_touch`), else the rule of
    `attribution.last_touch_of` chooses it."""
    if model not in MODELS:
        raise ValueError(f"unknown attribution model {model!r}; known: {', '.join(MODELS)}")
    if converted_at.utcoffset() is None:
        raise ValueError("converted_at must be timezone-aware")
    n = len(touches)
    if n == 0:
        return ()
    if model == "first_touch":
        return _one(n, 0)
    if model == "last_touch":
        return _one(n, _last_index(touches, last_touch))
    if model == "last_non_direct":
        index = next((i for i in range(n - 1, -1, -1) if touches[i].channel != DIRECT), n - 1)
        return _one(n, index)
    if model == "linear":
        return (Fraction(1, n),) * n
    if model == "time_decay":
        ages = [max(0.0, (converted_at - t.at).total_seconds()) for t in touches]
        youngest = min(ages)
        # Relative to the youngest touch (weight 1), so the sum never underflows to 0; the shares are the same.
        weights = [Fraction(2.0 ** (-(age - youngest) / _HALF_LIFE_S)) for age in ages]
        total = sum(weights, Fraction(0))
        return tuple(w / total for w in weights)
    # position_based
    if n == 1:
        return (Fraction(1),)
    if n == 2:
        return (Fraction(1, 2), Fraction(1, 2))
    middle = Fraction(1, 5 * (n - 2))
    return (Fraction(2, 5), *((middle,) * (n - 2)), Fraction(2, 5))


def _allocate(total: int, parts: Sequence[Fraction]) -> list[int]:
    """`total` whole units split in proportion to `parts` (exact fractions summing to 1) by the largest
    remainder: floors first, then one more unit to each of the largest remainders (ties: the earlier part)."""
    quotas = [p * total for p in parts]
    units = [q.numerator // q.denominator for q in quotas]
    left = total - sum(units)
    by_remainder = sorted(range(len(parts)), key=lambda i: (units[i] - quotas[i], i))
    for i in by_remainder[:left]:
        units[i] += 1
    return units


def _money(value: Decimal | str | int | None) -> tuple[int, Decimal, int]:
    """(whole units, unit, sign) of a value: cents, or ten-thousandths when it has more than two decimals."""
    if value is None:
        return 0, _CENT, 1
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError("a conversion's value must be finite")
    unit = _CENT if amount == amount.quantize(_CENT) else _FINEST
    amount = amount.quantize(unit)
    sign = -1 if amount < 0 else 1
    return int(abs(amount) / unit), unit, sign


def credit(model: str, touches: Sequence[Touch], *, converted_at: datetime,
           value: Decimal | str | int | None = None, last_touch: Touch | None = None) -> tuple[Credit, ...]:
    """The conversion's credits under `model`, one per touch key in the order the keys first appear in the
    touches (oldest first). Their `conversions` sum to exactly 1 and their `revenue` to exactly `value` (0 when
    None). No touches: one credit to `UNATTRIBUTED_KEY`."""
    money, unit, sign = _money(value)
    parts = shares(model, touches, converted_at, last_touch)
    if not parts:
        return (Credit(UNATTRIBUTED_KEY, Decimal(1), (sign * money) * unit),)
    by_key: dict[TouchKey, Fraction] = {}
    for touch, part in zip(touches, parts, strict=True):
        key = touch_key(touch)
        by_key[key] = by_key.get(key, Fraction(0)) + part
    keys = [k for k, part in by_key.items() if part > 0]
    conversions = _allocate(_CONVERSION_UNITS, [by_key[k] for k in keys])
    revenue = _allocate(money, [by_key[k] for k in keys])
    return tuple(
        Credit(key, Decimal(c) * CONVERSION_UNIT, (sign * r) * unit)
        for key, c, r in zip(keys, conversions, revenue, strict=True)
        if c or r
    )


def credit_models(touches: Sequence[Touch], *, converted_at: datetime, value: Decimal | str | int | None = None,
                  last_touch: Touch | None = None) -> dict[str, tuple[Credit, ...]]:
    """`credit` under every model, by model name in `MODELS` order."""
    return {model: credit(model, touches, converted_at=converted_at, value=value, last_touch=last_touch)
            for model in MODELS}
