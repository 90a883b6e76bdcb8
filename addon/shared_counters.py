"""Shared mode: limits and blocking budgets that hold over all replicas.

- **Limits.** A call on a key with an hourly limit or a monthly quota takes one indexed statement
  in PostgreSQL (store/counters.py ``ADMIT``), on an asyncio connection, so the event loop keeps
  serving other calls meanwhile. A key without limits pays nothing. If PostgreSQL does not answer
  (down, or slower than ``ADMIT_TIMEOUT_S``), the replica counts on locally from the last count
  it saw, and tries PostgreSQL again after ``RETRY_AFTER_S``.
- **Budgets.** The writer thread sends the spend this replica recorded and fetches the totals of
  all replicas every ``Writer.sync_interval`` (0.25 s), on a connection of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from .core.limits import Refusal
from .core.store import budgets as budget_rows
from .core.store import calls as call_rows
from .core.store import counters, shared
from .core.store.connection import control
from .state import ProxyState

log = logging.getLogger(__name__)

ADMIT_TIMEOUT_S = 1.0
RETRY_AFTER_S = 5.0


class SharedCounters:
    def __init__(self, cfg: shared.SharedConfig, state: ProxyState) -> None:
        self.cfg, self.state = cfg, state
        self._conn = None  # psycopg.AsyncConnection, used on the event loop only
        self._connecting: asyncio.Lock | None = None
        self._retry_at = 0.0
        self._last_warning = -1e9
        self._sync_db: shared.ControlConnection | None = None  # the writer thread's

    # -- limits, on the event loop ---------------------------------------------------------------

    async def admit(self, key_id: int, now: dt.datetime) -> Refusal | None:
        limiter = self.state.limiter
        limits = limiter.limits_of(key_id)
        if limits is None or limits.per_hour == 0 or limits.per_month == 0 or time.monotonic() < self._retry_at:
            return limiter.admit(key_id, now)
        hour, month = limiter.periods(now)
        params = counters.admit_params(key_id, hour, month, limits.per_hour, limits.per_month)
        try:
            row, used = await asyncio.wait_for(self._admit(params), ADMIT_TIMEOUT_S)
        except Exception as exc:  # PostgreSQL away or slow: never fail the call for it
            await self._give_up(exc)
            return limiter.admit(key_id, now)
        if row is not None:
            limiter.observe(key_id, row[0], row[1], now)
            return None
        hour_used, month_used = used or (0, 0)
        refusal = limiter.observe(key_id, hour_used, month_used, now)
        return refusal or limiter.admit(key_id, now)  # the limit changed meanwhile: count locally

    async def _admit(self, params: dict) -> tuple[tuple | None, tuple | None]:
        conn = await self._connection()
        row = await (await conn.execute(counters.ADMIT, params)).fetchone()
        used = None if row is not None else await (await conn.execute(counters.USED, params)).fetchone()
        return row, used

    async def _connection(self):
        import psycopg

        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.cfg.catalog, autocommit=True, connect_timeout=2,
                    options=f"-c search_path={shared.CONTROL_SCHEMA}")
            return self._conn

    async def _give_up(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_AFTER_S
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # it is broken already
                pass
        if time.monotonic() - self._last_warning > 30:
            self._last_warning = time.monotonic()
            log.warning("limits: PostgreSQL at %s did not answer (%s); counting on this replica alone, "
                        "retrying in %.0f s", self.cfg.where, type(exc).__name__, RETRY_AFTER_S)

    # -- on the writer thread --------------------------------------------------------------------

    def seed(self, con, now: dt.datetime) -> None:
        """Counters that do not exist yet start from the stored calls (a key given a limit, a new
        budget, the first start on shared storage); existing counters are never touched."""
        db = control(con)
        limiter, tracker = self.state.limiter, self.state.budgets
        unseeded = {k for k in limiter.limited_keys() if k not in counters.keys_with_counters(db)}
        if unseeded:
            hour, month = limiter.periods(now)
            counts = call_rows.counts_since(con, hour, month)
            counters.seed_limits(db, {k: v for k, v in counts.items() if k in unseeded}, hour, month)
        if tracker.has_budgets():
            day, month = tracker.periods(now)
            have = counters.spend(db, day, month)
            fresh = {b.id: budget_rows.spend_since(con, b.scope, b.scope_value, day, month)
                     for b in tracker.budgets() if b.id not in have}
            counters.seed_spend(db, fresh, day, month)


    def sync_budgets(self) -> None:
        tracker = self.state.budgets
        if not tracker.has_budgets():
            return
        unsynced, day, month = tracker.take_unsynced(dt.datetime.now(dt.UTC))
        try:
            if self._sync_db is None:
                self._sync_db = shared.ControlConnection(self.cfg)
            counters.add_spend(self._sync_db, unsynced, day, month)
            totals = counters.spend(self._sync_db, day, month)
        except Exception:
            tracker.give_back(unsynced)
            if self._sync_db is not None:
                self._sync_db.close()
                self._sync_db = None
            raise
        tracker.set_spend(totals, day)

    def close(self) -> None:
        if self._sync_db is not None:
            self._sync_db.close()
            self._sync_db = None
