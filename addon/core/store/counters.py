"""SQL for the shared mode's counters: calls per limited key and team, spend per budget, over all replicas.

Both live in PostgreSQL (shared_schema.py) and change with one statement that reads and writes
the row under its lock, so two replicas can never both take the last call of a limit. The
period (clock hour, month or day in the quota zone) is computed by the caller and sent along:
a row of an older period counts as zero, so nothing has to reset counters on the hour.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

# Admit up to %(n)s calls of one key (those that arrived together on a replica): as many as both
# limits leave, in one statement that holds the row's lock, so the replicas' grants never add up
# past a limit. The calls the replica admitted alone while PostgreSQL was away (%(hour_alone)s,
# %(month_alone)s, of the current hour and month) are added first, whatever the limits say: they
# were served. ``granted`` comes back with the new counts. A NULL limit is no limit (LEAST skips
# NULLs); the caller refuses a limit of 0 itself.
_HOUR_BEFORE = "CASE WHEN c.hour = excluded.hour THEN c.hour_count ELSE 0 END + %(hour_alone)s"
_MONTH_BEFORE = "CASE WHEN c.month = excluded.month THEN c.month_count ELSE 0 END + %(month_alone)s"


def _grant(hour_before: str, month_before: str) -> str:
    return (f"GREATEST(0, LEAST(%(n)s::BIGINT, %(per_hour)s::BIGINT - ({hour_before}), "
            f"%(per_month)s::BIGINT - ({month_before})))")


def _admit(table: str, id_column: str) -> str:
    return f"""
INSERT INTO {table} AS c ({id_column}, hour, hour_count, month, month_count, granted)
VALUES (%(id)s, %(hour)s, %(hour_alone)s + {_grant("%(hour_alone)s", "%(month_alone)s")},
        %(month)s, %(month_alone)s + {_grant("%(hour_alone)s", "%(month_alone)s")},
        {_grant("%(hour_alone)s", "%(month_alone)s")})
ON CONFLICT ({id_column}) DO UPDATE SET
    granted = {_grant(_HOUR_BEFORE, _MONTH_BEFORE)},
    hour_count = {_HOUR_BEFORE} + {_grant(_HOUR_BEFORE, _MONTH_BEFORE)},
    month_count = {_MONTH_BEFORE} + {_grant(_HOUR_BEFORE, _MONTH_BEFORE)},
    hour = excluded.hour, month = excluded.month
RETURNING granted, hour_count, month_count
"""


ADMIT = _admit("limit_counters", "key_id")
# The same for a team's calls (over all its keys). A key in a limited team is admitted in one
# transaction: the team's grant first (its row locked until the end), then the key's out of that,
# then what the key's limits did not take given back to the team (GIVE_BACK_TEAM).
ADMIT_TEAM = _admit("team_limit_counters", "team_id")
GIVE_BACK_TEAM = """
UPDATE team_limit_counters SET hour_count = hour_count - %(n)s, month_count = month_count - %(n)s
WHERE team_id = %(id)s RETURNING hour_count, month_count
"""


def admit_params(ident: int, hour: dt.datetime, month: dt.datetime, per_hour: int | None,
                 per_month: int | None, calls: int, hour_alone: int = 0, month_alone: int = 0) -> dict:
    """For ADMIT (``ident``: the key's id) or ADMIT_TEAM (the team's)."""
    return {"id": ident, "hour": hour, "month": month, "per_hour": per_hour, "per_month": per_month,
            "n": calls, "hour_alone": hour_alone, "month_alone": month_alone}


def seed_limits(db, counts: dict[int, tuple[int, int]], hour: dt.datetime, month: dt.datetime) -> None:
    """Start the counters of keys that have none yet from the calls already stored (a key given a
    limit, or the first start on shared storage); counters that exist are left alone."""
    for key_id, (hour_used, month_used) in counts.items():
        db.execute("INSERT INTO limit_counters VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING",
                   [key_id, hour, hour_used, month, month_used])


def keys_with_counters(db) -> set[int]:
    return {key_id for (key_id,) in db.execute("SELECT key_id FROM limit_counters").fetchall()}


def seed_team_limits(db, counts: dict[int, tuple[int, int]], hour: dt.datetime, month: dt.datetime) -> None:
    """As seed_limits, for teams given a limit (their keys' calls stored this hour and month)."""
    for team_id, (hour_used, month_used) in counts.items():
        db.execute("INSERT INTO team_limit_counters VALUES (?, ?, ?, ?, ?) ON CONFLICT (team_id) DO NOTHING",
                   [team_id, hour, hour_used, month, month_used])


def teams_with_counters(db) -> set[int]:
    return {team_id for (team_id,) in db.execute("SELECT team_id FROM team_limit_counters").fetchall()}


def add_spend(db, deltas: dict[int, tuple[Decimal, Decimal]], day: dt.datetime, month: dt.datetime) -> None:
    """Add this replica's new spend per budget (today's, this month's) to the shared totals of the
    current day and month."""
    for budget_id, (today, this_month) in deltas.items():
        db.execute("""
            INSERT INTO budget_spend AS s VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (budget_id) DO UPDATE SET
                day_usd = CASE WHEN s.day = excluded.day THEN s.day_usd ELSE 0 END + excluded.day_usd,
                month_usd = CASE WHEN s.month = excluded.month THEN s.month_usd ELSE 0 END + excluded.month_usd,
                day = excluded.day, month = excluded.month
        """, [budget_id, day, today, month, this_month])


def seed_spend(db, spend: dict[int, tuple[Decimal, Decimal]], day: dt.datetime, month: dt.datetime) -> None:
    """Start the totals of budgets that have none yet from the stored calls."""
    for budget_id, (today, this_month) in spend.items():
        db.execute("INSERT INTO budget_spend VALUES (?, ?, ?, ?, ?) ON CONFLICT (budget_id) DO NOTHING",
                   [budget_id, day, today, month, this_month])


def set_spend(db, spend: dict[int, tuple[Decimal, Decimal]], day: dt.datetime, month: dt.datetime) -> None:
    """Replace the totals of these budgets with spend recomputed from the stored calls (a key moved
    to or from a team: budgets.respend_teams)."""
    for budget_id, (today, this_month) in spend.items():
        db.execute("INSERT INTO budget_spend VALUES (?, ?, ?, ?, ?) ON CONFLICT (budget_id) DO UPDATE SET "
                   "day = excluded.day, day_usd = excluded.day_usd, month = excluded.month, "
                   "month_usd = excluded.month_usd", [budget_id, day, today, month, this_month])


def spend(db, day: dt.datetime, month: dt.datetime) -> dict[int, tuple[Decimal, Decimal]]:
    """budget id -> (spent today, spent this month) over all replicas."""
    rows = db.execute("SELECT budget_id, day, day_usd, month, month_usd FROM budget_spend").fetchall()
    return {budget_id: (Decimal(day_usd) if d == day else Decimal(0), Decimal(month_usd) if m == month else Decimal(0))
            for budget_id, d, day_usd, m, month_usd in rows}
