"""How an amount of US dollars is written for people: in tables, refusals and alerts alike."""

from __future__ import annotations

from decimal import Decimal


def usd(value: Decimal | float | int | None) -> str:
    """Precision that fits the size: $1,234.56, $0.0012 (four decimals, trailing zeros dropped),
    <$0.0001; "unpriced" for an unknown cost (never $0)."""
    if value is None:
        return "unpriced"
    amount = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if amount == 0:
        return "$0"
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount >= 1:
        return f"{sign}${amount:,.2f}"
    if amount < Decimal("0.0001"):
        return f"{sign}<$0.0001"
    return f"{sign}$" + f"{amount:.4f}".rstrip("0").rstrip(".")
