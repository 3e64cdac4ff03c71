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

Exact sums. Each model gives every touch a whole-number weight exactly proportional to its share (time decay's
float weights are exact integers over a common power of two); the weights become whole units by the
largest-remainder method, in integer arithmetic: a conversion's credits sum to exactly 1 in millionths
(`CONVERSION_UNIT`), and to exactly its value in cents (in ten-thousandths for a value with more than two decimals,
the four a stored value can carry). A tie of remainders goes to the key seen first. (Time decay's weights are
2^(-age/7 days) to a float's precision; only the split can differ from the ideal, by less than one unit.) Report
rows are sums of these decimals, so they add up exactly to the report's totals.
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
_ONE = Decimal("1.000000")
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


def _one(n: int, index: int) -> list[int]:
    return [1 if i == index else 0 for i in range(n)]


def _last_index(touches: Sequence[Touch], last_touch: Touch | None) -> int:
    """Where the last touch is: the attribution's own when given and among the touches, else the rule's."""
    for chosen in (last_touch, last_touch_of(touches)):
        if chosen is None:
            continue
        for i in range(len(touches) - 1, -1, -1):
            if touches[i] == chosen:
                return i
    return len(touches) - 1


def _weights(model: str, touches: Sequence[Touch], converted_at: datetime, last_touch: Touch | None) -> list[int]:
    """Each touch's weight under `model` as whole numbers (exactly proportional to its share; not all zero)."""
    n = len(touches)
    if model == "first_touch":
        return _one(n, 0)
    if model == "last_touch":
        return _one(n, _last_index(touches, last_touch))
    if model == "last_non_direct":
        return _one(n, next((i for i in range(n - 1, -1, -1) if touches[i].channel != DIRECT), n - 1))
    if model == "linear":
        return [1] * n
    if model == "time_decay":
        ages = [max(0.0, (converted_at - t.at).total_seconds()) for t in touches]
        youngest = min(ages)
        # Relative to the youngest touch (weight 1), so the sum never underflows to 0; the shares are the same.
        # Each float is exactly num / 2**k: over the largest 2**k they are whole numbers, with no rounding.
        ratios = [(2.0 ** (-(age - youngest) / _HALF_LIFE_S)).as_integer_ratio() for age in ages]
        common = max(den for _, den in ratios)
        return [num * (common // den) for num, den in ratios]
    # position_based: 2/5, then 1/5 shared by the n - 2 between, then 2/5; over 5 (n - 2) when n > 2
    if n <= 2:
        return [1] * n
    return [2 * (n - 2), *([1] * (n - 2)), 2 * (n - 2)]


def _check(model: str, converted_at: datetime) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown attribution model {model!r}; known: {', '.join(MODELS)}")
    if converted_at.utcoffset() is None:
        raise ValueError("converted_at must be timezone-aware")


def shares(model: str, touches: Sequence[Touch], converted_at: datetime,
           last_touch: Touch | None = None) -> tuple[Fraction, ...]:
    """Each touch's exact share of the conversion under `model` (they sum to 1; empty for no touches).
    `last_touch` is the attribution's own last touch when known (`Attribution.last_touch`), else the rule of
    `attribution.last_touch_of` chooses it."""
    _check(model, converted_at)
    if not touches:
        return ()
    weights = _weights(model, touches, converted_at, last_touch)
    total = sum(weights)
    return tuple(Fraction(w, total) for w in weights)


def _allocate(total: int, weights: Sequence[int]) -> list[int]:
    """`total` whole units split in proportion to `weights` by the largest remainder: floors first, then one
    more unit to each of the largest remainders (ties: the earlier weight). Integer arithmetic only."""
    whole = sum(weights)
    quotas = [total * w for w in weights]
    units = [q // whole for q in quotas]
    left = total - sum(units)
    if left:
        by_remainder = sorted(range(len(weights)), key=lambda i: (units[i] * whole - quotas[i], i))
        for i in by_remainder[:left]:
            units[i] += 1
    return units


def _money(value: Decimal | str | int | None) -> tuple[int, int, int]:
    """(whole units, exponent of the unit, sign) of a value: cents, or ten-thousandths when it has more than two
    decimals."""
    if value is None:
        return 0, -2, 1
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError("a conversion's value must be finite")
    unit = _CENT if amount == amount.quantize(_CENT) else _FINEST
    amount = amount.quantize(unit)
    exponent = int(unit.as_tuple().exponent)
    return int(abs(amount).scaleb(-exponent)), exponent, -1 if amount < 0 else 1


def _key_index(touches: Sequence[Touch]) -> tuple[list[TouchKey], list[int]]:
    """The distinct keys of the touches in order of first appearance, and each touch's position among them."""
    distinct: list[TouchKey] = []
    seen: dict[TouchKey, int] = {}
    index = []
    for touch in touches:
        key = touch_key(touch)
        position = seen.get(key)
        if position is None:
            position = seen[key] = len(distinct)
            distinct.append(key)
        index.append(position)
    return distinct, index


def _credits(weights: Sequence[int], keys: tuple[list[TouchKey], list[int]],
             money: tuple[int, int, int]) -> tuple[Credit, ...]:
    distinct, index = keys
    units, exponent, sign = money
    by_key = [0] * len(distinct)
    for position, weight in zip(index, weights, strict=True):
        by_key[position] += weight
    chosen = [i for i, w in enumerate(by_key) if w > 0]
    if len(chosen) == 1:  # the single-touch models, and any path of one key
        return (Credit(distinct[chosen[0]], _ONE, Decimal(sign * units).scaleb(exponent)),)
    parts = [by_key[i] for i in chosen]
    conversions = _allocate(_CONVERSION_UNITS, parts)
    revenue = _allocate(units, parts)
    return tuple(
        Credit(distinct[i], Decimal(c).scaleb(-6), Decimal(sign * r).scaleb(exponent))
        for i, c, r in zip(chosen, conversions, revenue, strict=True)
        if c or r
    )


_UNATTRIBUTED_INDEX = ([UNATTRIBUTED_KEY], [0])


def credit(model: str, touches: Sequence[Touch], *, converted_at: datetime,
           value: Decimal | str | int | None = None, last_touch: Touch | None = None) -> tuple[Credit, ...]:
    """The conversion's credits under `model`, one per touch key in the order the keys first appear in the
    touches (oldest first). Their `conversions` sum to exactly 1 and their `revenue` to exactly `value` (0 when
    None). No touches: one credit to `UNATTRIBUTED_KEY`."""
    _check(model, converted_at)
    money = _money(value)
    if not touches:
        return _credits([1], _UNATTRIBUTED_INDEX, money)
    return _credits(_weights(model, touches, converted_at, last_touch), _key_index(touches), money)


def credit_models(touches: Sequence[Touch], *, converted_at: datetime, value: Decimal | str | int | None = None,
                  last_touch: Touch | None = None) -> dict[str, tuple[Credit, ...]]:
    """`credit` under every model, by model name in `MODELS` order (the keys and the value read once)."""
    if converted_at.utcoffset() is None:
        raise ValueError("converted_at must be timezone-aware")
    money = _money(value)
    if not touches:
        return dict.fromkeys(MODELS, _credits([1], _UNATTRIBUTED_INDEX, money))
    keys = _key_index(touches)
    return {model: _credits(_weights(model, touches, converted_at, last_touch), keys, money) for model in MODELS}
