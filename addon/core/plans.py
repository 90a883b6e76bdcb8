"""Plans and the limits they give a key: defined here and nowhere else.

``None`` means unlimited. A key's own ``per_hour``/``per_month`` limits, when set, replace its
plan's. New keys get ``DEFAULT_PLAN``, which has no limits: a self-hosted proxy should not start
refusing calls nobody asked it to refuse.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    per_hour: int | None
    per_month: int | None
    retention_days: int | None


PLANS = {
    "free": Plan("free", per_hour=1_000, per_month=10_000, retention_days=7),
    "pro": Plan("pro", per_hour=10_000, per_month=None, retention_days=90),
    "enterprise": Plan("enterprise", per_hour=None, per_month=None, retention_days=None),
}
DEFAULT_PLAN = "enterprise"
# The most a key's or a team's own limit may be (a team's is an INTEGER column): far past any real
# traffic, where a larger number was a DuckDB traceback.
LIMIT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    per_hour: int | None
    per_month: int | None


def limits_for(plan: str, per_hour: int | None, per_month: int | None) -> Limits:
    base = PLANS.get(plan, PLANS[DEFAULT_PLAN])
    return Limits(per_hour if per_hour is not None else base.per_hour,
                  per_month if per_month is not None else base.per_month)


def retention_days_for(plan: str, own_days: int | None) -> int | None:
    """How many days a key's raw calls are kept: its own setting, else its plan's (None: always)."""
    return own_days if own_days is not None else PLANS.get(plan, PLANS[DEFAULT_PLAN]).retention_days
