"""What the per-call limit and budget checks cost on the request path.

    .venv/bin/python -m bench.limits

Target: well under 0.1 ms of added p50 latency. This times the two checks every forwarded call
makes (the key's limits, then the blocking budgets covering it), with 20 budgets defined.
"""

from __future__ import annotations

import datetime as dt
import timeit
import zoneinfo
from decimal import Decimal

from addon.core.budgets import Budget, BudgetTracker
from addon.core.limits import Limiter
from addon.core.plans import Limits


def main() -> None:
    utc = zoneinfo.ZoneInfo("UTC")
    limiter = Limiter(utc)
    limiter.set_limits({key: Limits(10**9, 10**9) for key in range(1, 101)})
    budgets = BudgetTracker(utc)
    now = dt.datetime.now(dt.UTC)
    budgets.load([Budget(n, "customer", f"cust-{n}", Decimal(10**6), None, True) for n in range(20)],
                 lambda b, day, month: (Decimal(0), Decimal(0)), now)

    def one_call() -> None:
        moment = dt.datetime.now(dt.UTC)
        budgets.blocked(7, "cust-3", "search", moment)
        limiter.admit(7, moment)

    runs = 200_000
    seconds = timeit.timeit(one_call, number=runs) / runs
    print(f"limit + budget checks: {seconds * 1e6:.1f} us per call (target: well under 100 us)")


if __name__ == "__main__":
    main()
