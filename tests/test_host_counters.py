"""The host's shared counts of the embedded mode's workers (addon/core/host_counters.py): real processes,
a real file, the kernel's flock."""

from __future__ import annotations

import datetime as dt
import fcntl
import multiprocessing
import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from addon.core import host_counters, periods
from addon.core.budgets import Budget, BudgetTracker
from addon.core.limits import Limiter, Team
from addon.core.plans import Limits
from addon.core.store import connection, reading, writing

NOW = dt.datetime.now(dt.UTC)
SPAWN = multiprocessing.get_context("spawn")  # the test process has threads: no fork


def _made(tmp_path: Path, counts: dict[int, tuple[int, int]] | None = None) -> Path:
    path = tmp_path / "counters"
    host_counters.create(path, counts or {}, periods.hour_start(NOW), periods.month_start(NOW, periods.UTC))
    return path


def _limiter(path: Path, per_hour: int, now: dt.datetime = NOW) -> Limiter:
    limiter = Limiter(periods.UTC)
    # Its periods from ``now``, the hour the file was made for: a Limiter starts at its own clock's
    # hour and never goes back, so one made after the hour turned would count a fresh hour.
    limiter.seed({}, now)
    limiter.set_limits({7: Limits(per_hour=per_hour, per_month=None)})
    limiter.host = host_counters.HostCounters(path)
    return limiter


def _admit_many(path: str, tries: int, now: str, admitted) -> None:
    # The hour the file was made for, passed in: a spawned process imports this module afresh, with
    # its own NOW, and the hour may have turned since.
    at = dt.datetime.fromisoformat(now)
    limiter = _limiter(Path(path), 1000, at)
    got = sum(limiter.admit(7, at) is None for _ in range(tries))
    with admitted.get_lock():
        admitted.value += got


def test_four_processes_racing_on_one_key_admit_exactly_its_limit(tmp_path):
    path = _made(tmp_path, {7: (200, 200)})  # 200 calls stored this hour already: 800 left
    admitted = SPAWN.Value("i", 0)
    racers = [SPAWN.Process(target=_admit_many, args=(str(path), 400, NOW.isoformat(), admitted)) for _ in range(4)]
    for p in racers:
        p.start()
    for p in racers:  # each spawned process imports DuckDB and the addon first: slow on a loaded host
        p.join(300)
    assert [p.exitcode for p in racers] == [0, 0, 0, 0]
    assert admitted.value == 800
    refusal = _limiter(path, 1000, NOW).admit(7, NOW)
    assert refusal is not None and (refusal.limit, refusal.used) == ("per-hour", 1000)


def test_a_teams_count_is_seeded_shared_by_its_keys_and_a_refused_call_counts_in_neither(tmp_path):
    path = tmp_path / "counters"
    hour, month = periods.hour_start(NOW), periods.month_start(NOW, periods.UTC)
    host_counters.create(path, {1: (1, 1)}, hour, month, {7: (2, 2)})  # the team's keys made 2 calls this hour
    team = Team(7, "research", Limits(per_hour=4, per_month=None))
    workers = [Limiter(periods.UTC) for _ in range(2)]  # two workers' views of one file
    for limiter in workers:
        limiter.seed({}, NOW)
        limiter.set_limits({1: Limits(per_hour=2, per_month=None), 2: Limits(None, None)}, {1: team, 2: team})
        limiter.host = host_counters.HostCounters(path)
    assert workers[0].admit(1, NOW) is None  # key 1's second call this hour, the team's third
    assert workers[1].admit(1, NOW).team is None  # key 1's own limit: not counted for the team
    assert workers[1].admit(2, NOW) is None
    refusal = workers[0].admit(2, NOW)
    assert (refusal.limit, refusal.used, refusal.team) == ("per-hour", 4, "research")
    assert workers[1].admit(3, NOW) is None  # in no team


def _hold_the_lock(path: str, holding) -> None:
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    holding.set()
    time.sleep(60)


def test_a_worker_killed_while_holding_the_lock_leaves_no_lock_behind(tmp_path):
    path = _made(tmp_path)
    holding = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_the_lock, args=(str(path), holding))
    holder.start()
    assert holding.wait(30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    started = time.monotonic()
    assert _limiter(path, 5).admit(7, dt.datetime.now(dt.UTC)) is None
    assert time.monotonic() - started < 1


def test_spend_recorded_by_one_worker_blocks_the_next_call_on_another(tmp_path):
    path = _made(tmp_path)
    budget = Budget(3, "customer", "acme", Decimal("5"), None, True, key_id=1)
    trackers = []
    for _ in range(2):  # two workers: two open files, two flock holders
        tracker = BudgetTracker(periods.UTC)
        tracker.host = host_counters.HostCounters(path)
        tracker.load([budget], lambda b, day, month: (Decimal("1.5"), Decimal("1.5")), NOW)
        trackers.append(tracker)
    first, second = trackers
    assert second.blocked(1, "acme", None, NOW) is None
    first.record(1, "acme", None, Decimal("3.5000000001"), NOW)  # 1.5 stored + 3.5...: crosses 5
    refusal = second.blocked(1, "acme", None, NOW)
    assert refusal is not None and refusal.period == "daily" and refusal.spent == Decimal("5.000000001")
    assert second.blocked(2, "acme", None, NOW) is None  # another key's calls with that tag: not this budget


def test_a_cost_dated_yesterday_counts_in_this_month_only_on_every_worker(tmp_path):
    """A batch's usage ran before its results were downloaded: counted where its row is dated."""
    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)  # mid-month: yesterday is this month's
    tracker = BudgetTracker(periods.UTC)
    tracker.host = host_counters.HostCounters(_made(tmp_path))
    budget = Budget(3, "all", None, Decimal("1"), Decimal("5"), True)
    tracker.load([budget], lambda b, day, month: (Decimal(0), Decimal(0)), now)
    for days_ago, cost in ((0, "0.25"), (1, "0.5"), (40, "8")):
        tracker.record(1, None, None, Decimal(cost), now, now - dt.timedelta(days=days_ago))
    assert tracker.host.spend([3], *tracker.periods(now)) == {3: (Decimal("0.25"), Decimal("0.75"))}


def test_a_team_budget_is_seeded_once_per_host_and_a_move_moves_its_spend_once(tmp_path):
    """Each worker seeded a team budget's slot again from the store at its first load and at every
    move (each seeing the keys change), wiping the spend the other workers counted but had not stored
    (the probe: 10 to 20 times the overshoot a budget allows)."""
    path = _made(tmp_path)
    stored = {1: Decimal("0.25"), 2: Decimal("0.5")}

    def key_spend(keys, day, month):
        return (sum((stored.get(k, Decimal(0)) for k in keys), Decimal(0)),) * 2

    def seed(budget, day, month):
        return key_spend({1, 2}, day, month)

    search = Budget(3, "team", "search", Decimal("5"), None, True)
    first, second = (BudgetTracker(periods.UTC), BudgetTracker(periods.UTC))
    for tracker in (first, second):
        tracker.host = host_counters.HostCounters(path)
    first.load([search], seed, NOW, {1: "search", 2: "search"}, key_spend)
    first.record(1, None, None, Decimal("1"), NOW)  # not yet stored when the second worker starts
    second.load([search], seed, NOW, {1: "search", 2: "search"}, key_spend)
    assert second.blocked(1, None, None, NOW) is None and first.host.spend([3], *first.periods(NOW)) == {
        3: (Decimal("1.75"), Decimal("1.75"))}
    for tracker in (first, second):  # key 2 leaves: both workers see it; its 0.50 goes once
        tracker.load([search], seed, NOW, {1: "search"}, key_spend)
    assert first.host.spend([3], *first.periods(NOW)) == {3: (Decimal("1.25"), Decimal("1.25"))}


def test_asking_whether_a_limit_refuses_counts_no_call_on_the_host(tmp_path):
    path = _made(tmp_path)
    first, second = _limiter(path, 2), _limiter(path, 2)
    assert first.refusing(7, NOW) is None and second.refusing(7, NOW) is None
    assert first.admit(7, NOW) is None and second.refusing(7, NOW) is None  # 1 of 2 counted, not 3
    assert second.admit(7, NOW) is None
    refusal = first.refusing(7, NOW)
    assert refusal is not None and (refusal.limit, refusal.used) == ("per-hour", 2)
    assert first.admit(7, NOW) is not None


def test_a_worker_never_opens_the_file_behind_an_absent_owner(tmp_path):
    """A worker's rows wait (StoreBusy) instead of opening the file its restarting owner needs."""
    db = tmp_path / "aispendtrack.duckdb"
    with writing(db):
        pass  # the file exists; no owner serves it
    connection.only_through_owner(db)
    try:
        for open_it in (writing, reading):
            with pytest.raises(connection.OwnerAway, match="owner.sock"), open_it(db):
                pass
        duckdb.connect(str(db)).close()  # nobody holds it: the refusal was ours, not a lock's
    finally:
        connection._owner_only.clear()


def test_more_keys_with_calls_than_slots_still_start_and_the_rest_are_counted_per_worker(tmp_path):
    """Probe: a month with calls on more keys than KEY_SLOTS made ``create`` raise CountersFull, so
    `proxy --workers N` could not start at all. The keys that fit are seeded; the others are counted by
    each worker alone (as limits.py does for a key past the slots)."""
    slots = host_counters.KEY_SLOTS
    counts = {key_id: (1, 2) for key_id in range(1, slots + 2)}  # one key more than the slots
    path = _made(tmp_path, counts)
    counters = host_counters.HostCounters(path)
    hour, month = periods.hour_start(NOW), periods.month_start(NOW, periods.UTC)
    seen = counters.count_call(1, hour, month, lambda used, monthly, *team: (used, monthly))
    assert seen == (1, 2)  # the seeded counts of a key that fit
    with pytest.raises(host_counters.CountersFull):
        counters.count_call(slots + 5, hour, month, lambda used, monthly, *team: None)
    counters.close()


def test_a_leftover_partial_file_open_to_others_does_not_make_the_counters_file_so(tmp_path):
    """Probe: a start killed between creating ``counters.partial`` and renaming it left the file; one
    made wider meanwhile (mode 666) kept its mode through O_CREAT, so any local user could rewrite the
    host's counts (grant a key fresh quota, or block it). The counters file is 600 whatever was there."""
    (tmp_path / "counters.partial").write_bytes(b"left over")
    os.chmod(tmp_path / "counters.partial", 0o666)
    path = _made(tmp_path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_a_corrupt_or_truncated_counters_file_is_made_anew_at_start(tmp_path):
    """A start (seed) replaces whatever is at <home>/workers/counters; a worker refuses a file of
    another size or version with a clear error instead of reading garbage counts."""
    from cli.embedded import HostOwner
    home = tmp_path / "home"
    home.mkdir()
    with writing(home / "aispendtrack.duckdb"):
        pass
    path = host_counters.path(home)
    path.parent.mkdir()
    path.write_bytes(b"\x00" * 100)  # truncated
    with pytest.raises(ValueError, match="length|counters file"):
        host_counters.HostCounters(path)
    path.write_bytes(b"garbage!" * (host_counters.SIZE // 8))  # the right size, the wrong header
    with pytest.raises(ValueError, match="not a counters file"):
        host_counters.HostCounters(path)
    HostOwner._seed_counters(home, "", True)
    counters = host_counters.HostCounters(path)
    hour, month = periods.hour_start(NOW), periods.month_start(NOW, periods.UTC)
    assert counters.count_call(3, hour, month, lambda used, monthly, *team: (used, monthly)) == (0, 0)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    counters.close()


def test_key_ids_past_the_slot_count_get_slots_of_their_own(tmp_path):
    """Probe: ids are placed modulo the slot count; keys 3 and 3 + 10 x KEY_SLOTS share a home slot
    and still count apart, seeded or new."""
    far = 3 + 10 * host_counters.KEY_SLOTS
    path = _made(tmp_path, {far: (5, 9)})
    counters = host_counters.HostCounters(path)
    hour, month = periods.hour_start(NOW), periods.month_start(NOW, periods.UTC)
    assert counters.count_call(3, hour, month, lambda used, monthly, *team: (used, monthly)) == (0, 0)
    assert counters.count_call(far, hour, month, lambda used, monthly, *team: (used, monthly)) == (5, 9)
    assert counters.count_call(3, hour, month, lambda used, monthly, *team: None) is None
    assert counters.count_call(3, hour, month, lambda used, monthly, *team: (used, monthly)) == (1, 1)
    assert counters.count_call(far, hour, month, lambda used, monthly, *team: (used, monthly)) == (5, 9)
    counters.close()
