"""How an amount of US dollars is written for people: in tables, refusals, alerts and on the page.

The rule (docs/usage.md, "How money and JSON are written"; web/static/app.js ``money`` follows
it, and tests/test_money_everywhere.py holds the two to the same strings):

- exact to a millionth of a dollar: $0.05175 stays $0.05175 (halves round up beyond the sixth
  decimal, a price of $0.075 per million tokens times one token is $0.000000075 -> <$0.000001);
- at least two decimals, more only as the amount needs them: $3.00, $0.069, $1,234.56;
- in a column, every amount takes the decimals of the one that needs most ($0.0690 above $0.0833);
- $0 is an amount like any other ($0.00); a cost nobody knows is the word "unpriced", never $0.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal

UNPRICED = "unpriced"
MAX_PLACES = 6
MICRO = Decimal(1).scaleb(-MAX_PLACES)


def shown(value: Decimal | float | int) -> Decimal:
    """The amount ``usd`` shows: to the micro-dollar, half up."""
    return _decimal(value).quantize(MICRO, ROUND_HALF_UP)


def usd(value: Decimal | float | int | None, places: int = 2) -> str:
    """``places`` is the least number of decimals (a column's, from ``column_places``)."""
    if value is None:
        return UNPRICED
    amount = _decimal(value)
    rounded = shown(amount)
    sign = "-" if rounded < 0 else ""
    if rounded == 0 and amount != 0:
        return f"{'-' if amount < 0 else ''}<$0.{'0' * (MAX_PLACES - 1)}1"
    return f"{sign}${abs(rounded):,.{max(places, _needed(rounded))}f}"


def column_places(values: Iterable[Decimal | float | int | None]) -> int:
    """The decimals every amount of a column is written with: those of the one that needs most."""
    return max([_needed(_decimal(v).quantize(MICRO, ROUND_HALF_UP)) for v in values if v is not None], default=2)


def _needed(rounded: Decimal) -> int:
    micros = int(abs(rounded).scaleb(MAX_PLACES))
    places = MAX_PLACES
    while places > 2 and micros % 10 == 0:
        micros //= 10
        places -= 1
    return places


def _decimal(value: Decimal | float | int) -> Decimal:
    # A float (a JSON number) is read as its shortest form, as JavaScript's String(value) writes it.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
