"""Shared mode: limits and blocking budgets that hold over all replicas.

- **Limits.** Calls on a key with an hourly limit or a monthly quota, or in a team with one, wait
  for one statement in PostgreSQL (store/counters.py ``ADMIT``; a team's limit adds ``ADMIT_TEAM``
  before it, in the same transaction), sent on an asyncio connection, so the event loop keeps
  serving other calls meanwhile. The calls that arrive while a statement is out go together in
  the next one, which grants as many as the limits leave: one round trip per batch, not per call,
  so a burst never queues behind itself, and the count stays exact (PostgreSQL grants each call of
  a limit once, under the row's lock). A key without limits (its own or its team's) pays nothing.
- **Outage.** If PostgreSQL does not answer within ``ADMIT_TIMEOUT_S`` (down, or that slow), the
  replica counts alone from the last count it saw and tries again after ``RETRY_AFTER_S``; the
  calls it admitted alone are then added to the shared count, so the replicas refuse what the
  limit no longer leaves. A statement that timed out after PostgreSQL applied it is counted again:
  an outage can only over-count, never lose a call.
- **Budgets.** The writer thread sends the spend this replica recorded and fetches the totals of
  all replicas every ``Writer.sync_interval`` (0.25 s), on a connection of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass

from .core.limits import Refusal, team_counts
from .core.store import budgets as budget_rows
from .core.store import calls as call_rows
from .core.store import counters, shared
from .core.store.connection import control
from .state import ProxyState

log = logging.getLogger(__name__)

ADMIT_TIMEOUT_S = 1.0  # for one statement on an open connection
# Opening one takes longer, more so on a busy machine: not an outage. (The catalog's one setting,
# here whatever the URL says: STUCK_AFTER_S counts on it.)
CONNECT_TIMEOUT_S = shared.CONNECT_TIMEOUT_S
RETRY_AFTER_S = 5.0
# A call never waits longer than this for the sending task, whatever psycopg does on a broken
# connection (a cancelled statement can itself wait for the server): then the replica counts alone.
STUCK_AFTER_S = ADMIT_TIMEOUT_S + CONNECT_TIMEOUT_S + 2


@dataclass
class Alone:
    """Calls of a key admitted on this replica alone, not yet in the shared count."""

    hour: dt.datetime
    hour_calls: int
    month: dt.datetime
    month_calls: int

    def within(self, hour: dt.datetime, month: dt.datetime) -> tuple[int, int]:
        return (self.hour_calls if self.hour == hour else 0), (self.month_calls if self.month == month else 0)


class SharedCounters:
    def __init__(self, cfg: shared.SharedConfig, state: ProxyState) -> None:
        self.cfg, self.state = cfg, state
        self._conn = None  # psycopg.AsyncConnection, used on the event loop only
        self._waiting: dict[int, list[asyncio.Future]] = {}  # key id -> calls for the next statement
        self._alone: dict[int, Alone] = {}
        self._alone_teams: dict[int, Alone] = {}  # team id -> calls of its keys admitted alone
        self._sending: asyncio.Task | None = None
        self._retry_at = 0.0
        self._last_warning = -1e9
        self._sync_db: shared.ControlConnection | None = None  # the writer thread's

    # -- limits, on the event loop ---------------------------------------------------------------

    def _counted_here(self, key_id: int) -> bool:
        """Whether this replica decides the key's calls alone: no limit at all, or one of 0 (never a call)."""
        limiter = self.state.limiter
        if not limiter.limited(key_id):
            return True
        limits, team = limiter.limits_of(key_id), limiter.team_of(key_id)
        return any(lim is not None and 0 in (lim.per_hour, lim.per_month)
                   for lim in (limits, team.limits if team else None))

    async def admit(self, key_id: int, now: dt.datetime) -> Refusal | None:
        if self._counted_here(key_id):
            return self.state.limiter.admit(key_id, now)
        if time.monotonic() < self._retry_at:
            return self._admit_alone(key_id, now)
        waiter: asyncio.Future[Refusal | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key_id, []).append(waiter)
        self._send_soon()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), STUCK_AFTER_S)
        except TimeoutError:
            waiter.cancel()  # the stuck task's answer, if it ever comes, is nobody's
            self._abandon()
            return self._admit_alone(key_id, now)

    def _abandon(self) -> None:
        """The sending task is stuck: leave it and its connection, and count alone for a while."""
        sending, self._sending, self._conn = self._sending, None, None
        if sending is not None:
            sending.cancel()
        self._retry_at = time.monotonic() + RETRY_AFTER_S
        asyncio.get_running_loop().call_later(RETRY_AFTER_S + 0.1, self._send_soon)
        waiting, self._waiting = self._waiting, {}
        for key_id, waiters in waiting.items():
            _answer(waiters, lambda k=key_id: self._admit_alone(k, dt.datetime.now(dt.UTC)))
        log.warning("limits: PostgreSQL at %s did not answer within %.0f s; counting on this replica alone, "
                    "retrying in %.0f s", self.cfg.where, STUCK_AFTER_S, RETRY_AFTER_S)

    def _send_soon(self) -> None:
        # Done already: mitmproxy's loop runs a new task eagerly, so one that never waits (PostgreSQL
        # refusing at once) ends inside create_task, before it is kept here: no send would start again.
        if (self._sending is None or self._sending.done()) and (self._waiting or self._alone):
            self._sending = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        """One statement per key with calls waiting (or calls admitted alone), until none are left."""
        try:
            while self._waiting or self._alone:
                waiting, self._waiting = self._waiting, {}
                if time.monotonic() < self._retry_at:  # PostgreSQL failed meanwhile
                    for key_id, waiters in waiting.items():
                        _answer(waiters, lambda k=key_id: self._admit_alone(k, dt.datetime.now(dt.UTC)))
                    return
                for key_id in [*waiting, *(k for k in self._alone if k not in waiting)]:
                    await self._send(key_id, waiting.get(key_id, []))
        finally:
            if self._sending is asyncio.current_task():
                self._sending = None

    async def _send(self, key_id: int, waiters: list[asyncio.Future]) -> None:
        waiters = [w for w in waiters if not w.done()]  # a call whose client left takes no grant
        if not waiters and key_id not in self._alone:
            return
        now = dt.datetime.now(dt.UTC)
        limiter = self.state.limiter
        limits, team = limiter.limits_of(key_id), limiter.team_of(key_id)
        if time.monotonic() < self._retry_at:
            _answer(waiters, lambda: self._admit_alone(key_id, now))
            return
        if self._counted_here(key_id):  # changed meanwhile
            self._alone.pop(key_id, None)
            _answer(waiters, lambda: limiter.admit(key_id, now))
            return
        hour, month = limiter.periods(now)
        params = counters.admit_params(key_id, hour, month, limits.per_hour if limits else None,
                                       limits.per_month if limits else None, len(waiters),
                                       *_within(self._alone.get(key_id), hour, month))
        team_params = None if team is None else counters.admit_params(
            team.id, hour, month, team.limits.per_hour, team.limits.per_month, len(waiters),
            *_within(self._alone_teams.get(team.id), hour, month))
        try:
            conn = await self._connection()
            granted, hour_used, month_used, team_used = await asyncio.wait_for(
                self._execute(conn, params, team_params), ADMIT_TIMEOUT_S)
        except Exception as exc:  # PostgreSQL away or slow: never fail the call for it
            await self._give_up(exc)
            _answer(waiters, lambda: self._admit_alone(key_id, now))
            return
        self._alone.pop(key_id, None)  # sent: only this task adds to it while PostgreSQL answers
        if team is not None:
            self._alone_teams.pop(team.id, None)
        refusal = limiter.observe(key_id, hour_used, month_used, now, team_used)
        _answer(waiters[:granted], lambda: None)
        # Not granted: the limit is reached (or it changed since: then count here, as a key without one).
        _answer(waiters[granted:], lambda: refusal or limiter.admit(key_id, now))

    def _admit_alone(self, key_id: int, now: dt.datetime) -> Refusal | None:
        """Count on this replica alone (PostgreSQL away), remembering the call for the shared count."""
        limiter = self.state.limiter
        refusal = limiter.admit(key_id, now)
        if refusal is None:
            hour, month = limiter.periods(now)
            _add_alone(self._alone, key_id, hour, month)
            team = limiter.team_of(key_id)
            if team is not None:
                _add_alone(self._alone_teams, team.id, hour, month)
        return refusal

    @staticmethod
    async def _execute(conn, params: dict, team_params: dict | None) -> tuple[int, int, int, tuple[int, int] | None]:
        """(granted, the key's counts, the team's counts or None). With a team: its grant first, the
        key's out of that, what the key's limits did not take given back, all under the team row's lock."""
        if team_params is None:
            return (*await (await conn.execute(counters.ADMIT, params)).fetchone(), None)
        async with conn.transaction():
            team_granted, team_hour, team_month = await (await conn.execute(counters.ADMIT_TEAM,
                                                                            team_params)).fetchone()
            granted, hour_used, month_used = await (await conn.execute(counters.ADMIT,
                                                                       {**params, "n": team_granted})).fetchone()
            if granted < team_granted:
                team_hour, team_month = await (await conn.execute(counters.GIVE_BACK_TEAM, {
                    "id": team_params["id"], "n": team_granted - granted})).fetchone()
        return granted, hour_used, month_used, (team_hour, team_month)

    async def _connection(self):
        import psycopg

        if self._conn is not None and shared.ended_by_server(self._conn):
            # PostgreSQL restarted since the last statement: its first statement would fail, and the
            # replica counted alone for RETRY_AFTER_S from its last count (probe: 21-25 of 10 admitted).
            await self._drop_connection()
        if self._conn is None or self._conn.closed:  # only _send_all gets here: one at a time
            self._conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(
                shared.dsn(self.cfg, f"-c search_path={shared.CONTROL_SCHEMA}"), autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S), CONNECT_TIMEOUT_S + 1)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:  # bounded: every limited call of this replica waits behind this task
                await asyncio.wait_for(conn.close(), ADMIT_TIMEOUT_S)
            except Exception:  # it is broken already
                pass

    async def _give_up(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_AFTER_S
        # Then send what was admitted alone, even if no call comes to trigger it.
        asyncio.get_running_loop().call_later(RETRY_AFTER_S + 0.1, self._send_soon)
        await self._drop_connection()
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
        teams = limiter.limited_teams()
        unseeded_teams = set(teams) - counters.teams_with_counters(db) if teams else set()
        if unseeded or unseeded_teams:
            hour, month = limiter.periods(now)
            counts = call_rows.counts_since(con, hour, month)
            counters.seed_limits(db, {k: v for k, v in counts.items() if k in unseeded}, hour, month)
            of_team = {key_id: team_id for team_id in unseeded_teams for key_id in teams[team_id]}
            by_team = team_counts(counts, of_team)
            counters.seed_team_limits(db, {t: by_team.get(t, (0, 0)) for t in unseeded_teams}, hour, month)
        if tracker.has_budgets():
            day, month = tracker.periods(now)
            have = counters.spend(db, day, month)
            fresh = {b.id: budget_rows.spend_since(con, b.scope, b.scope_value, b.key_id, day, month)
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


def _within(alone: Alone | None, hour: dt.datetime, month: dt.datetime) -> tuple[int, int]:
    return alone.within(hour, month) if alone else (0, 0)


def _add_alone(table: dict[int, Alone], ident: int, hour: dt.datetime, month: dt.datetime) -> None:
    alone = table.get(ident)
    if alone is None or alone.month != month:
        alone = table[ident] = Alone(hour, 0, month, 0)
    if alone.hour != hour:
        alone.hour, alone.hour_calls = hour, 0
    alone.hour_calls += 1
    alone.month_calls += 1


def _answer(waiters: list[asyncio.Future], outcome) -> None:
    """Give each waiting call ``outcome()`` (counted per call); a call gone meanwhile takes nothing."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(outcome())
