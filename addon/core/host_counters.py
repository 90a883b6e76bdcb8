"""The embedded mode's workers (``aispendtrack proxy --workers N``): one count per key, one per team
and one spend per budget for the whole host, in shared memory under one lock, so limits and blocking budgets hold
across workers exactly as in one process.

The file (``<home>/workers/counters``) is made and seeded by the first owner (cli/embedded.py)
before any worker starts (``create``), kept by an owner that replaces a dead one, and mapped by
every worker (``HostCounters``). Each check-and-count takes an exclusive ``flock`` on it for a few
microseconds (a lookup's worth of work on a 40-byte slot): the kernel lets go of that lock when
its holder dies, so a worker killed with ``kill -9`` mid-count leaves no lock behind. Nothing reads a
slot without the lock. A worker killed in the few instructions of one ``pack_into`` could leave a
slot with some words new and some old (each aligned 8-byte word is written whole): its own call's
increment lost (that call never reaches the upstream), or at a period's roll an old count under
the new start; that window is accepted, not closed.

A slot is five signed 64-bit integers: the id + 1 (0: free), the start of its short period (the hour
for a key or a team, the day for a budget) in epoch seconds, its count there, the start of its month, its count
there. Budgets count nano-dollars, each cost rounded up (never under a budget by rounding).
Nothing is ever removed: ids are few (keys and budgets), and a new start of the proxy makes a new file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import TypeVar

from .home import WORKERS_DIR

log = logging.getLogger(__name__)

FILE = "counters"
KEY_SLOTS = 16_384
BUDGET_SLOTS = 4_096
TEAM_SLOTS = 4_096
_SLOT = struct.Struct("<qqqqq")
_HEADER = struct.Struct("<8sq")
_MAGIC = b"astcnt03"
_KEYS_AT = _HEADER.size
_BUDGETS_AT = _KEYS_AT + KEY_SLOTS * _SLOT.size
_TEAMS_AT = _BUDGETS_AT + BUDGET_SLOTS * _SLOT.size
# A team budget's keys as its spend counts them: the id + 1 and a hash of the set (the rest unused).
_MEMBERS_AT = _TEAMS_AT + TEAM_SLOTS * _SLOT.size
SIZE = _MEMBERS_AT + BUDGET_SLOTS * _SLOT.size
NANO = Decimal(10) ** 9
T = TypeVar("T")


def path(home: Path) -> Path:
    return home / WORKERS_DIR / FILE


class CountersFull(RuntimeError):
    """More distinct keys (or budgets) than slots: that one is counted by its worker alone."""


def create(path: Path, key_counts: dict[int, tuple[int, int]], hour: dt.datetime, month: dt.datetime,
           team_counts: dict[int, tuple[int, int]] | None = None,
           budget_spend: tuple[dict[int, tuple[Decimal, Decimal]], dt.datetime, dt.datetime] | None = None) -> None:
    """A fresh file (in place of a previous start's), with the calls stored this hour and month per key
    and per team; ``budget_spend``: ({budget id: (spend today, this month)}, the day, the month), the
    budgets' slots seeded before any worker seeds them from the store alone."""
    partial = path.with_name(path.name + ".partial")
    # Made anew (O_EXCL): one a killed start left behind keeps whatever mode it was given since, and a
    # symlink there would have been followed.
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, SIZE)
        with mmap.mmap(fd, SIZE) as memory:
            _HEADER.pack_into(memory, 0, _MAGIC, SIZE)
            _seed(memory, _KEYS_AT, KEY_SLOTS, key_counts, hour, month, "keys")
            _seed(memory, _TEAMS_AT, TEAM_SLOTS, team_counts or {}, hour, month, "teams")
            spend, day, this_month = budget_spend or ({}, hour, month)
            for budget_id, (today, monthly) in spend.items():
                try:
                    at = _find(memory, _BUDGETS_AT, BUDGET_SLOTS, budget_id)
                except CountersFull:  # the others are seeded by each worker from the store (seed_spend)
                    log.warning("more than %d budgets: the others are counted per worker", BUDGET_SLOTS)
                    break
                _SLOT.pack_into(memory, at, budget_id + 1, _epoch(day), _nano(today), _epoch(this_month),
                                _nano(monthly))
    finally:
        os.close(fd)
    os.replace(partial, path)


def _seed(memory: mmap.mmap, base: int, slots: int, counts: dict[int, tuple[int, int]], hour: dt.datetime,
          month: dt.datetime, what: str) -> None:
    for ident, (hour_calls, month_calls) in counts.items():
        try:
            at = _find(memory, base, slots, ident)
        except CountersFull:  # the rest are counted by each worker alone (limits.py), not a failed start
            log.warning("more than %d %s have calls this month: the others' limits are counted per "
                        "worker, not for the whole host", slots, what)
            return
        _SLOT.pack_into(memory, at, ident + 1, _epoch(hour), hour_calls, _epoch(month), month_calls)


class HostCounters:
    """A worker's view of the host's counts (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR)
        self._memory = mmap.mmap(self._fd, SIZE)
        if _HEADER.unpack_from(self._memory, 0) != (_MAGIC, SIZE):
            raise ValueError(f"{path} is not a counters file of this version")
        self._thread_lock = threading.Lock()  # flock is per open file: the threads of one process share it
        self._epochs: dict[dt.datetime, int] = {}  # a period's start in epoch seconds (timestamp() costs ~1 us)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[mmap.mmap]:
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield self._memory
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _epoch(self, moment: dt.datetime) -> int:
        found = self._epochs.get(moment)
        if found is None:
            if len(self._epochs) > 64:  # periods pass: keep the few current ones
                self._epochs.clear()
            found = self._epochs[moment] = _epoch(moment)
        return found

    def count_call(self, key_id: int, hour: dt.datetime, month: dt.datetime,
                   refusal: Callable[[int, int, int, int], T | None], team_id: int | None = None) -> T | None:
        """Under the lock: the calls this hour and month of the key and of its team (0, 0 for none);
        ``refusal(hour_used, month_used, team_hour, team_month)`` says whether one more is refused; if
        not, it is counted for both. Exact whichever worker asks. On the request path of every call:
        no context manager, each period's epoch computed once."""
        hour_at, month_at = self._epoch(hour), self._epoch(month)
        memory = self._memory
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                at = _find(memory, _KEYS_AT, KEY_SLOTS, key_id)
                team_at = _find(memory, _TEAMS_AT, TEAM_SLOTS, team_id) if team_id is not None else None
                hour_used, month_used = _current(memory, at, key_id, hour_at, month_at)
                team_hour, team_month = (_current(memory, team_at, team_id, hour_at, month_at)
                                         if team_at is not None and team_id is not None else (0, 0))
                refused = refusal(hour_used, month_used, team_hour, team_month)
                if refused is None:
                    _SLOT.pack_into(memory, at, key_id + 1, hour_at, hour_used + 1, month_at, month_used + 1)
                    if team_at is not None and team_id is not None:
                        _SLOT.pack_into(memory, team_at, team_id + 1, hour_at, team_hour + 1, month_at,
                                        team_month + 1)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return refused

    def seed_spend(self, budget_id: int, day: dt.datetime, month: dt.datetime, seed: Callable[[], tuple],
                   replace: bool = False) -> None:
        """A budget's slot from the stored spend ``seed()`` gives, unless a worker seeded it already
        (``replace``: in any case, as when a key moved into or out of a team budget's team).
        The stored spend is read outside the lock (it is a query), so a second worker can read it too:
        the first to take the lock afterwards writes it, the second leaves it."""
        if not replace:
            with self._locked() as memory:
                if _SLOT.unpack_from(memory, _find(memory, _BUDGETS_AT, BUDGET_SLOTS, budget_id))[0]:
                    return
        today, this_month = seed()
        with self._locked() as memory:
            at = _find(memory, _BUDGETS_AT, BUDGET_SLOTS, budget_id)
            if replace or not _SLOT.unpack_from(memory, at)[0]:
                _SLOT.pack_into(memory, at, budget_id + 1, self._epoch(day), _nano(today), self._epoch(month),
                                _nano(this_month))

    def note_members(self, budget_id: int, members: int) -> None:
        """The keys (``members_hash``) a team budget's slot was seeded with, unless noted already."""
        with self._locked() as memory:
            at = _find(memory, _MEMBERS_AT, BUDGET_SLOTS, budget_id)
            if _SLOT.unpack_from(memory, at)[0] == 0:
                _SLOT.pack_into(memory, at, budget_id + 1, members, 0, 0, 0)

    def move_spend(self, budget_id: int, was: int, now: int, delta: tuple[Decimal, Decimal], day: dt.datetime,
                   month: dt.datetime) -> bool:
        """A team budget's keys changed from ``was`` to ``now`` (``members_hash``): its spend moves by
        ``delta`` (the stored spend of the keys that came in less that of those that left), once for
        the host, whichever worker sees it first; the spend counted meanwhile stays. False when the host
        counts other keys than ``was`` (two moves the workers saw apart): the caller seeds it again."""
        with self._locked() as memory:
            at = _find(memory, _MEMBERS_AT, BUDGET_SLOTS, budget_id)
            held, recorded = _SLOT.unpack_from(memory, at)[:2]
            recorded = recorded if held == budget_id + 1 else 0
            if recorded == now:
                return True  # another worker moved it
            _SLOT.pack_into(memory, at, budget_id + 1, now, 0, 0, 0)
            if recorded not in (0, was):
                return False
            spend_at = _find(memory, _BUDGETS_AT, BUDGET_SLOTS, budget_id)
            today, this_month = _current(memory, spend_at, budget_id, self._epoch(day), self._epoch(month))
            _SLOT.pack_into(memory, spend_at, budget_id + 1, self._epoch(day), max(today + _nano(delta[0]), 0),
                            self._epoch(month), max(this_month + _nano(delta[1]), 0))
            return True

    def add_spend(self, costs: dict[int, tuple[Decimal, Decimal]], day: dt.datetime, month: dt.datetime) -> None:
        """Add (to today's, to this month's) spend of each budget."""
        with self._locked() as memory:
            for budget_id, (cost_today, cost_month) in costs.items():
                at = _find(memory, _BUDGETS_AT, BUDGET_SLOTS, budget_id)
                today, this_month = _current(memory, at, budget_id, self._epoch(day), self._epoch(month))
                _SLOT.pack_into(memory, at, budget_id + 1, self._epoch(day), today + _nano(cost_today),
                                self._epoch(month), this_month + _nano(cost_month))

    def spend(self, budget_ids: list[int], day: dt.datetime, month: dt.datetime) -> dict[int, tuple[Decimal, Decimal]]:
        """(today, this month) per budget, as every worker has recorded it."""
        found = {}
        with self._locked() as memory:
            for budget_id in budget_ids:
                at = _find(memory, _BUDGETS_AT, BUDGET_SLOTS, budget_id)
                today, this_month = _current(memory, at, budget_id, self._epoch(day), self._epoch(month))
                found[budget_id] = (Decimal(today) / NANO, Decimal(this_month) / NANO)
        return found

    def close(self) -> None:
        self._memory.close()
        os.close(self._fd)


def members_hash(keys: frozenset[int]) -> int:
    """A set of key ids as one nonzero signed 64-bit number (0 in a slot: none noted)."""
    digest = hashlib.blake2b(",".join(map(str, sorted(keys))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


def _epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _nano(amount) -> int:
    return int((Decimal(amount) * NANO).to_integral_value(ROUND_CEILING))


def _find(memory: mmap.mmap, base: int, slots: int, ident: int) -> int:
    """The offset of ``ident``'s slot, or of the free one it takes (open addressing, never deleted)."""
    for probe in range(slots):
        at = base + ((ident + probe) % slots) * _SLOT.size
        held = _SLOT.unpack_from(memory, at)[0]
        if held in (0, ident + 1):
            return at
    raise CountersFull(f"more than {slots} distinct ids to count")


def _current(memory: mmap.mmap, at: int, ident: int, short: int, month: int) -> tuple[int, int]:
    """The slot's counts in the periods starting at ``short`` and ``month`` (0 for a period that ended)."""
    held, short_at, short_count, month_at, month_count = _SLOT.unpack_from(memory, at)
    if held != ident + 1:
        return 0, 0
    return (short_count if short_at == short else 0), (month_count if month_at == month else 0)
