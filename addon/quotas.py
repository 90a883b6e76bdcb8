"""The Quotas addon: per-key and per-team rate limits and monthly quotas, and blocking budgets.

An admitted call (gate.py) over its key's or its team's limit, or in the scope of a blocking budget that is
spent, is answered 429 with ``retry-after`` here and goes no further. The counts live in memory
(addon/core/limits.py, addon/core/budgets.py), in the quota time zone stored in the database.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Coroutine

from mitmproxy import ctx, exceptions, http

from . import refusals, settings
from .core import config, home, periods
from .core.budgets import BudgetTracker
from .core.limits import Limiter
from .core.store import StoreError, writing
from .state import ADMITTED, Admission, ProxyState

log = logging.getLogger(__name__)


class Quotas:
    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def load(self, loader) -> None:
        settings.add_options(loader, "Quotas")

    def configure(self, updated: set[str]) -> None:
        if "aispendtrack_quota_tz" in updated and ctx.options.aispendtrack_quota_tz:
            _zone(ctx.options.aispendtrack_quota_tz)  # validated now; stored when the proxy starts

    def running(self) -> None:
        """Count in the stored quota time zone; one given as an option is stored first, so that the
        CLI and the web app count days and months as this proxy does."""
        try:
            with writing(home.db_path(self.state.data_home())) as con:
                if ctx.options.aispendtrack_quota_tz:
                    zone = config.set_quota_zone(con, ctx.options.aispendtrack_quota_tz)
                else:
                    zone = config.quota_zone(con)
        except StoreError as exc:
            # Without the store at start there is no key to check calls against: better not to
            # serve (a balancer sends the calls elsewhere) than to refuse every call as unknown.
            log.error("AiSpendTrack cannot start: %s", exc)
            ctx.master.shutdown()
            return
        if zone != self.state.limiter.zone:
            self.state.limiter, self.state.budgets = Limiter(zone), BudgetTracker(zone)

    def request(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None:
        """Refuse the call if a budget or limit says so. A limited key in the shared mode needs a
        round-trip to PostgreSQL: then this returns a coroutine, which mitmproxy awaits before the
        next addon sees the call; every other call is decided here, with no await."""
        admitted: Admission | None = flow.metadata.get(ADMITTED)
        if admitted is None or flow.response is not None:
            return None
        now = dt.datetime.now(dt.UTC)
        over_budget = self.state.budgets.blocked(admitted.key_id, admitted.customer_id, admitted.feature, now)
        if over_budget is not None:
            # A limit reached too, that lasts longer, is the answer: retry-after says when a call passes.
            limit = (self.state.limiter.refusing(admitted.key_id, now)
                     if admitted.key_id is not None and self.state.limiter.limited(admitted.key_id) else None)
            if limit is not None and limit.resets_at > over_budget.resets_at:
                self._limit(flow, admitted, limit)
                return None
            refusals.budget_exceeded(flow, admitted.provider, admitted.key_id, over_budget, now)
            del flow.metadata[ADMITTED]
            return None
        counters = self.state.counters
        if counters is not None and self.state.limiter.limited(admitted.key_id):
            return self._admit_shared(flow, admitted, counters, now)
        self._limit(flow, admitted, self.state.limiter.admit(admitted.key_id, now))
        return None

    async def _admit_shared(self, flow: http.HTTPFlow, admitted: Admission, counters, now: dt.datetime) -> None:
        self._limit(flow, admitted, await counters.admit(admitted.key_id, now))

    @staticmethod
    def _limit(flow: http.HTTPFlow, admitted: Admission, refusal) -> None:
        if refusal is not None:
            refusals.limit_reached(flow, admitted.provider, admitted.key_id, refusal)
            del flow.metadata[ADMITTED]


def _zone(name: str):
    try:
        return periods.zone(name)
    except periods.UnknownZone as exc:
        raise exceptions.OptionsError(f"aispendtrack_quota_tz: {exc}") from None
