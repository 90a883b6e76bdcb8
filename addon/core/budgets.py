"""Budgets: spend per scope (all calls, a key, a team, a customer, a feature) per day and per month.

A team budget counts the calls of the keys in the team now (store/teams.py): moving a key moves its
spend of the day and month too, as it moves its history in reports (``respend_teams``).

Customer ids and features are whatever a client sends in ``x-customer-id`` / ``x-feature``, so a
budget on one belongs to a key (``Budget.key_id``): it counts and blocks only that key's calls with
that tag, and another key sending the same id neither spends it nor is blocked by it. A budget
over the tag on every key (``key_id`` None) is the admin's explicit choice (``--all-keys``).

Spend is kept in memory and grows as calls complete, so a blocking budget refuses the very
next call after the one that crossed it. It is seeded from the store when a budget is loaded.
Days and months follow the same time zone as the monthly quotas.

How far a budget can be overshot: calls already in flight when the budget is crossed still
complete and count, so a budget is exceeded by at most the cost of the calls running at that
moment (for a stream, everything it generates).
"""

from __future__ import annotations

import datetime as dt
import functools
import shlex
import threading
import zoneinfo
from dataclasses import dataclass
from decimal import Decimal

from .host_counters import HostCounters, members_hash
from .periods import day_start, month_start, next_day_start, next_month_start, seconds_until

SCOPES = ("all", "key", "team", "customer", "feature")
TAGS = ("customer", "feature")  # the scopes a client names itself, per key
MAX_TAG_LENGTH = 128


def valid_tag(value: str) -> bool:
    """What an x-customer-id or x-feature may be: the proxy refuses a call with another (gate.py),
    so a budget's scope naming one could never count a call."""
    return 0 < len(value) <= MAX_TAG_LENGTH and value.isprintable()


@dataclass(frozen=True)
class Budget:
    id: int
    scope: str
    scope_value: str | None
    daily_usd: Decimal | None
    monthly_usd: Decimal | None
    block: bool
    key_id: int | None = None  # a customer or feature budget's key; None: every key's calls (TAGS only)

    def covers(self, key_id: int | None, customer_id: str | None, feature: str | None,
               team: str | None = None) -> bool:
        """Whether a call counts against this budget; ``team``: the name of its key's team."""
        if self.scope == "all":
            return True
        if self.scope == "key":
            return key_id is not None and str(key_id) == self.scope_value
        if self.scope == "team":
            return team is not None and team == self.scope_value
        if self.key_id is not None and key_id != self.key_id:
            return False
        return (customer_id if self.scope == "customer" else feature) == self.scope_value

    def owned_by(self, key_id: int | None) -> bool:
        """Whether every call this budget counts is ``key_id``'s: only then may that key see its spend."""
        if key_id is None:
            return False
        return self.key_id == key_id or (self.scope == "key" and self.scope_value == str(key_id))

    def label(self) -> str:
        """For people: "all calls", "key 3", "customer acme of key 3", "customer acme on all keys"."""
        if self.scope in TAGS:
            return f"{self.scope} {self.scope_value} " + (f"of key {self.key_id}" if self.key_id else "on all keys")
        return "all calls" if self.scope == "all" else f"{self.scope} {self.scope_value}"

    @property
    def scope_arg(self) -> str:
        """As `aispendtrack budgets set --scope` takes it: "all", "customer:acme"."""
        return self.scope + (f":{self.scope_value}" if self.scope_value else "")

    @property
    def set_args(self) -> str:
        """The arguments of `aispendtrack budgets set` that name this budget, quoted for the shell (a
        customer id is a caller's text: `<!channel> $(id)` pasted as is would run)."""
        owner = [] if self.scope not in TAGS else ["--key", str(self.key_id)] if self.key_id else ["--all-keys"]
        return shlex.join(["--scope", self.scope_arg, *owner])

    @classmethod
    def from_row(cls, row: dict) -> Budget:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class BudgetRefusal:
    budget: Budget
    period: str  # "daily" or "monthly"
    size: Decimal
    spent: Decimal
    resets_at: dt.datetime

    def retry_after(self, now: dt.datetime) -> int:
        return seconds_until(self.resets_at, now)


def with_spend(con, now: dt.datetime, zone: zoneinfo.ZoneInfo) -> list[dict]:
    """Every stored budget, with ``spent_today_usd`` and ``spent_this_month_usd`` from the store, the
    calls among them without a known cost (``unpriced_calls_today``, ``..._this_month``), and ``tz``:
    the zone of "today" and "this month", as the proxy counts them."""
    from .store import budgets as budget_rows  # the store's rows, read on the caller's connection

    today, month = day_start(now, zone), month_start(now, zone)
    rows = budget_rows.all_budgets(con)
    for row in rows:
        (row["spent_today_usd"], row["spent_this_month_usd"], row["unpriced_calls_today"],
         row["unpriced_calls_this_month"]) = budget_rows.spend_and_unpriced_since(
            con, row["scope"], row["scope_value"], row["key_id"], today, month)
        row["tz"] = zone.key
    return rows


def respend_teams(con, names: list[str], now: dt.datetime) -> None:
    """Shared mode: after keys changed team, the shared day's and month's spend of those teams'
    budgets becomes their keys' stored spend (the replicas take it at their next sync)."""
    from .config import quota_zone
    from .store import budgets as budget_rows
    from .store import counters
    from .store.connection import control, is_shared

    if not is_shared(con):  # embedded: the proxy seeds team budgets again when it sees the move
        return
    zone = quota_zone(con)
    today, month = day_start(now, zone), month_start(now, zone)
    spend = {row["id"]: budget_rows.spend_since(con, "team", row["scope_value"], None, today, month)
             for row in budget_rows.all_budgets(con) if row["scope"] == "team" and row["scope_value"] in names}
    counters.set_spend(control(con), spend, today, month)


class BudgetTracker:
    def __init__(self, zone: zoneinfo.ZoneInfo):
        self.zone = zone
        # Shared mode: spend recorded here but not yet added to the shared totals (take_unsynced).
        self.shared = False
        self._unsynced: dict[int, list[Decimal]] = {}  # budget id -> [today, this month]
        # A worker of the embedded mode: spend is the host's, shared by every worker (host_counters.py).
        self.host: HostCounters | None = None
        self._lock = threading.Lock()
        self._budgets: dict[int, Budget] = {}
        self._blocking: list[Budget] = []  # checked on every call: usually empty
        self._spend: dict[int, list[Decimal]] = {}  # budget id -> [today, this month]
        self._team_of: dict[int, str] = {}  # key id -> its team's name (team budgets)
        self._members: dict[int, frozenset[int]] = {}  # team budget id -> the keys it counts
        # The current day and month; the first _roll sets them (the ends start in the past).
        self._day = self._month = self._day_end = self._month_end = dt.datetime.min.replace(tzinfo=dt.UTC)

    def load(self, budgets: list[Budget], seed, now: dt.datetime, teams: dict[int, str] | None = None,
             key_spend=None) -> None:
        """Replace the definitions; ``seed(budget, day_start, month_start)`` gives stored spend for new ones.
        ``teams``: each key's team's name. When keys moved into or out of a team, its budgets' spend
        follows them, as the reports do: ``key_spend(key_ids, day_start, month_start)`` gives the stored
        spend of the keys that moved, added or taken off (without it the budget is seeded again)."""
        teams = teams or {}
        with self._lock:
            self._roll(now)
            fresh = {b.id: b for b in budgets}
            day, month = self._day, self._month
            members = {b.id: frozenset(k for k, name in teams.items() if name == b.scope_value)
                       for b in budgets if b.scope == "team"}
            for budget in fresh.values():
                known = budget.id in self._spend
                # A rename moves no key: the spend stays whole, the part not yet stored too. In the
                # shared mode a move recounted the shared total (respend_teams), which the next sync
                # brings; a recount from the rows the lake has so far would lower what replicas counted.
                moved = known and budget.scope == "team" and members[budget.id] != self._members.get(budget.id)
                if known and (not moved or self.shared):
                    continue
                if moved and key_spend is not None and self._move(budget.id, self._members.get(budget.id, frozenset()),
                                                                   members[budget.id], key_spend, day, month):
                    continue
                if self.host is not None:
                    self.host.seed_spend(budget.id, day, month, functools.partial(seed, budget, day, month),
                                         replace=moved)
                    if budget.scope == "team":
                        self.host.note_members(budget.id, members_hash(members[budget.id]))
                    self._spend[budget.id] = [Decimal(0), Decimal(0)]  # unused: the host's counts
                else:
                    self._spend[budget.id] = list(seed(budget, day, month))
            self._team_of, self._members = teams, members
            self._spend = {k: v for k, v in self._spend.items() if k in fresh}
            self._budgets = fresh
            self._blocking = [b for b in fresh.values() if b.block]

    def _move(self, budget_id: int, was: frozenset[int], now: frozenset[int], key_spend, day: dt.datetime,
              month: dt.datetime) -> bool:
        """Keys moved into or out of a team budget's team: their stored spend added or taken off, the
        spend counted but not yet stored kept (a recount from the store alone lost it). False: the
        host's workers saw other moves; seed it again."""
        came, went = key_spend(now - was, day, month), key_spend(was - now, day, month)
        delta = (came[0] - went[0], came[1] - went[1])
        if self.host is not None:
            return self.host.move_spend(budget_id, members_hash(was), members_hash(now), delta, day, month)
        spend = self._spend[budget_id]
        self._spend[budget_id] = [max(spend[0] + delta[0], Decimal(0)), max(spend[1] + delta[1], Decimal(0))]
        return True

    def any_blocking(self, key_id: int | None, customer_id: str | None, feature: str | None) -> bool:
        team = self._team(key_id)
        return any(b.covers(key_id, customer_id, feature, team) for b in self._blocking)

    def _team(self, key_id: int | None) -> str | None:
        return None if key_id is None else self._team_of.get(key_id)

    def record(self, key_id: int | None, customer_id: str | None, feature: str | None,
               cost: Decimal | None, now: dt.datetime, at: dt.datetime | None = None) -> None:
        """Count a call's cost in the day and month it is dated in (``at``, its row's time; None: now),
        as the stored rows count it: a batch's usage ran before its results were downloaded."""
        if not cost:
            return
        day, month = self.periods(now)
        counted = (cost if at is None or at >= day else Decimal(0), cost if at is None or at >= month else Decimal(0))
        if not counted[1]:
            return  # an earlier month's: no budget counts it now
        team = self._team(key_id)
        if self.host is not None:
            covering = {b.id: counted for b in self._budgets.values() if b.covers(key_id, customer_id, feature, team)}
            if covering:
                self.host.add_spend(covering, day, month)
            return
        with self._lock:
            if (day, month) != (self._day, self._month):
                return  # the day rolled over meanwhile: the row is read as stored, at the next start
            for budget in self._budgets.values():
                if budget.covers(key_id, customer_id, feature, team):
                    spend = self._spend.setdefault(budget.id, [Decimal(0), Decimal(0)])
                    pending = self._unsynced.setdefault(budget.id, [Decimal(0), Decimal(0)]) if self.shared else None
                    for period in (0, 1):
                        spend[period] += counted[period]
                        if pending is not None:
                            pending[period] += counted[period]

    def has_budgets(self) -> bool:
        return bool(self._budgets)

    def budgets(self) -> list[Budget]:
        return list(self._budgets.values())

    def periods(self, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """(this day, this month) in the budgets' zone."""
        with self._lock:
            self._roll(now)
            return self._day, self._month

    def take_unsynced(self, now: dt.datetime) -> tuple[dict[int, tuple[Decimal, Decimal]], dt.datetime, dt.datetime]:
        """Shared mode: the spend recorded since the last call (today's, this month's), and the day and
        month it belongs to."""
        with self._lock:
            self._roll(now)
            taken, self._unsynced = self._unsynced, {}
            return {b: (today, month) for b, (today, month) in taken.items()}, self._day, self._month

    def give_back(self, unsynced: dict[int, tuple[Decimal, Decimal]]) -> None:
        """The shared totals could not be updated: keep the spend for the next try."""
        with self._lock:
            for budget_id, amounts in unsynced.items():
                pending = self._unsynced.setdefault(budget_id, [Decimal(0), Decimal(0)])
                for period in (0, 1):
                    pending[period] += amounts[period]

    def set_spend(self, totals: dict[int, tuple[Decimal, Decimal]], day: dt.datetime) -> None:
        """Shared mode: the totals of all replicas for ``day`` (and its month) replace ours, plus what
        this replica recorded since it last sent its spend."""
        with self._lock:
            if day != self._day:  # the day rolled over while we asked: the next sync gets the new one
                return
            for budget_id, (today, month) in totals.items():
                if budget_id in self._budgets:
                    pending = self._unsynced.get(budget_id, (Decimal(0), Decimal(0)))
                    self._spend[budget_id] = [today + pending[0], month + pending[1]]

    def blocked(self, key_id: int | None, customer_id: str | None, feature: str | None,
                now: dt.datetime) -> BudgetRefusal | None:
        if not self._blocking:
            return None
        team = self._team(key_id)
        covering = [b for b in self._blocking if b.covers(key_id, customer_id, feature, team)]
        if not covering:
            return None
        host = self._host_spend(covering, now)
        refusals = []
        with self._lock:
            self._roll(now)
            for budget in covering:
                today, month = (host or self._spend).get(budget.id, (Decimal(0), Decimal(0)))
                if budget.monthly_usd is not None and month >= budget.monthly_usd:
                    refusals.append(BudgetRefusal(budget, "monthly", budget.monthly_usd, month,
                                                  next_month_start(self._month, self.zone)))
                elif budget.daily_usd is not None and today >= budget.daily_usd:
                    refusals.append(BudgetRefusal(budget, "daily", budget.daily_usd, today,
                                                  next_day_start(self._day, self.zone)))
        # The one that lasts longest: a call is accepted only once every budget allows it (retry-after
        # said tomorrow while another budget refused until the month's end). Of equal ones, the first.
        return max(refusals, key=lambda refusal: refusal.resets_at, default=None)

    def _host_spend(self, budgets: list[Budget], now: dt.datetime) -> dict | None:
        if self.host is None:
            return None
        day, month = self.periods(now)
        return self.host.spend([b.id for b in budgets], day, month)

    def _roll(self, now: dt.datetime) -> None:
        if now >= self._day_end:  # compared on every call; the zone arithmetic runs once a day
            for spend in self._spend.values():
                spend[0] = Decimal(0)
            self._day = day_start(now, self.zone)
            self._day_end = next_day_start(self._day, self.zone)
        if now >= self._month_end:
            for spend in self._spend.values():
                spend[1] = Decimal(0)
            self._month = month_start(now, self.zone)
            self._month_end = next_month_start(self._month, self.zone)
