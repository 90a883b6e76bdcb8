"""SQL for one data subject (a customer id or a key): everything stored about it, and deleting it.

Where a subject appears: ``calls`` and ``rollups`` rows, budgets scoped to it, alerts about
it (by their dedupe key, or a customer's budget alert by its exact subject line), and for a key its own row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from .. import home as home_dir
from . import batches, keys, rollups
from .alerts import budget_subject, spike_subject
from .connection import control, is_shared, one
from .transaction import transaction


@dataclass(frozen=True)
class Subject:
    kind: str  # "customer" or "key"
    value: str  # the customer id, or the key id as text

    def label(self) -> str:
        return f"{self.kind} {self.value}"

    def as_json(self) -> dict[str, str | int]:
        """As an answer names it: a key id is a number, as it is asked for."""
        return {self.kind: int(self.value) if self.kind == "key" else self.value}


def subject_from(customer: str | None, key: object | None) -> Subject:
    """Exactly one of a customer id or a key id (a number); ValueError says what is wrong."""
    if (customer is None) == (key is None):
        raise ValueError("Give exactly one of customer=ID or key=ID.")
    if key is not None:
        return Subject("key", str(keys.parse_id(key)))
    if not isinstance(customer, str) or not customer:
        raise ValueError("customer must be a non-empty string.")
    return Subject("customer", customer)


def _rows_condition(subject: Subject) -> tuple[str, list]:
    column = _column(subject)
    return f"{column} = ?", [subject.value if column == "customer_id" else int(subject.value)]


def _column(subject: Subject) -> str:
    """The column of rows (raw and rollups) that names the subject."""
    return "customer_id" if subject.kind == "customer" else "key_id"


def _budget_ids(con: duckdb.DuckDBPyConnection, subject: Subject) -> list[int]:
    rows = control(con).execute("SELECT id FROM budgets WHERE scope = ? AND scope_value = ?",
                       [subject.kind, subject.value]).fetchall()
    return [budget_id for (budget_id,) in rows]


def _alerts_condition(con: duckdb.DuckDBPyConnection, subject: Subject, budget_ids: list[int]) -> tuple[str, list]:
    """The subject's own alerts, matched whole (never a customer id inside another's): its budgets'
    and, for a key, its quota's by dedupe key; spikes of its scope; and for a customer, alerts of a
    budget since removed, by their exact subject line."""
    patterns = [f"budget:{b}:%" for b in budget_ids]
    if subject.kind == "key":
        patterns.append(f"quota:{subject.value}:%")
    params: list = [_like_literal(p) for p in patterns]
    # spike:<scope>:<value>:<hour>, the hour as 2026-11-25T10: fixed width, so a value with a colon
    # in it cannot stand for another one.
    params.append(_like_literal(f"spike:{subject.kind}:{subject.value}:%")[:-1] + "____-__-__T__")
    condition = " OR ".join("dedupe_key LIKE ? ESCAPE '\\'" for _ in params)
    if subject.kind == "customer":
        # A budget's label names whose calls it counted (budgets.Budget.label): every key's, or one key's.
        key_ids = [key_id for (key_id,) in control(con).execute("SELECT id FROM keys").fetchall()]
        label = subject.label()
        labels = [label, f"{label} on all keys", *(f"{label} of key {k}" for k in key_ids)]
        condition += " OR subject IN (SELECT unnest(?::VARCHAR[]))"
        params.append([budget_subject(period, label) for period in ("daily", "monthly") for label in labels]
                      + [spike_subject(label)])
    return condition, params


def _like_literal(pattern: str) -> str:
    """Escape LIKE's wildcards in a pattern whose only intended wildcard is its trailing %."""
    body = pattern[:-1]
    return body.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def stream(con: duckdb.DuckDBPyConnection, table: str, subject: Subject, batch: int = 10_000) -> Iterator[dict]:
    """The subject's rows of ``calls`` or ``rollups``, without holding them all in memory."""
    condition, params = _rows_condition(subject)
    cur = con.execute(f"SELECT * FROM {table} WHERE {condition}", params)
    names = [d[0] for d in cur.description]
    while rows := cur.fetchmany(batch):
        for row in rows:
            yield dict(zip(names, row))


def small_tables(con: duckdb.DuckDBPyConnection, subject: Subject) -> dict[str, list[dict]]:
    """The subject's key (if it is one), budgets and alerts; the key hash is left out."""
    budget_ids = _budget_ids(con, subject)
    found = {"budgets": _dicts(con, "SELECT * FROM budgets WHERE id IN (SELECT unnest(?::INTEGER[]))", [budget_ids])}
    condition, params = _alerts_condition(con, subject, budget_ids)
    found["alerts"] = _dicts(con, f"SELECT * FROM alerts WHERE {condition} ORDER BY id", params)
    condition, params = _rows_condition(subject)
    found["batches"] = _dicts(con, f"SELECT * FROM batches WHERE {condition} ORDER BY created_at", params)
    if subject.kind == "key":
        found["key"] = _dicts(con, "SELECT * EXCLUDE (key_hash) FROM keys WHERE id = ?", [int(subject.value)])
    return found


def delete(con: duckdb.DuckDBPyConnection, subject: Subject) -> dict[str, int]:
    """Delete every row about the subject; returns how many of each. The rows go in one
    transaction, then the control state (PostgreSQL in the shared mode): a crash between the two
    leaves the subject's alerts and budgets, which running the delete again removes."""
    budget_ids = _budget_ids(con, subject)
    rows_condition, rows_params = _rows_condition(subject)
    with transaction(con):
        # The buckets the subject's sums are in, taken before its 15-minute rows go (_erase_coarse).
        con.execute(f"CREATE OR REPLACE TEMP TABLE erased_buckets AS SELECT DISTINCT bucket, key_id FROM rollups "
                    f"WHERE {rows_condition}", rows_params)
        counts = {
            "calls": _count(con, f"DELETE FROM calls WHERE {rows_condition}", rows_params),
            "rollups": _count(con, f"DELETE FROM rollups WHERE {rows_condition}", rows_params),
        }
        _erase_coarse(con, subject)
        con.execute("DROP TABLE erased_buckets")
    db = control(con)
    alerts_condition, alerts_params = _alerts_condition(con, subject, budget_ids)
    counts["alerts"] = _deleted(db, f"DELETE FROM alerts WHERE {alerts_condition} RETURNING id", alerts_params)
    counts["budgets"] = _deleted(db, "DELETE FROM budgets WHERE id IN (SELECT unnest(?::INTEGER[])) RETURNING id",
                                 [budget_ids])
    # A batch stays known (its usage is recorded once), no longer naming whose it was: none of the
    # tags of the call that created it stays, as none of the subject's calls does.
    counts["batches"] = batches.forget_subject(con, rows_condition, rows_params)
    if subject.kind == "key":
        counts["keys"] = _deleted(db, "DELETE FROM keys WHERE id = ? RETURNING id", [int(subject.value)])
    return counts


def _erase_coarse(con: duckdb.DuckDBPyConnection, subject: Subject) -> None:
    """The coarser rollups: a tier that names the subject (a key's hours and days, a customer's
    weeks) loses its rows; in the others, the buckets it had calls in are summed again from the
    15-minute rows left (store/rollups.py), so no report keeps its calls."""
    condition, params = _rows_condition(subject)
    for tier in rollups.DERIVED:
        if _column(subject) in tier.dimensions:
            con.execute(f"DELETE FROM {tier.table} WHERE {condition}", params)
        else:
            rollups.derive(con, rollups.pairs("erased_buckets", tier), tier)


def _deleted(db, sql: str, params: list) -> int:
    return len(db.execute(sql, params).fetchall())


def _dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> list[dict]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> int:
    return one(con.execute(sql, params))[0]


ERASURE_KEY = "erasure-key"  # the file in the data directory (embedded), the row of ``secrets`` (shared)


def erasure_key(con: duckdb.DuckDBPyConnection, home: Path) -> bytes:
    """The per-deployment key of erasure records' hashes, made on first use: in the shared mode in
    PostgreSQL, so every replica hashes alike; embedded, in ``home`` (0600), not in the database
    file, so a copy of the file does not carry it."""
    if is_shared(con):
        return shared_erasure_key(control(con))
    return bytes.fromhex(home_dir.secret(home, ERASURE_KEY))


def shared_erasure_key(db) -> bytes:
    db.execute("INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
               [ERASURE_KEY, secrets.token_hex(32)])
    return bytes.fromhex(db.execute("SELECT value FROM secrets WHERE name = ?", [ERASURE_KEY]).fetchone()[0])


def keyed(key: bytes, plain_hash: str) -> str:
    """HMAC-SHA-256 of a value's SHA-256 (hex): records made before the key are keyed in place."""
    return hmac.new(key, plain_hash.encode(), hashlib.sha256).hexdigest()


def value_hash(key: bytes, value: str) -> str:
    return keyed(key, hashlib.sha256(value.encode()).hexdigest())


def record_erasure(con: duckdb.DuckDBPyConnection, subject: Subject, key: bytes) -> None:
    """Remember (by keyed hash) that the subject was erased now (see without_erased, erasures)."""
    control(con).execute("INSERT INTO erasures VALUES (?, ?, now()) ON CONFLICT (kind, value_hash) "
                         "DO UPDATE SET erased_at = excluded.erased_at", [subject.kind, value_hash(key, subject.value)])


def erasures(con: duckdb.DuckDBPyConnection, since: dt.datetime | None = None) -> dict[tuple[str, str], dt.datetime]:
    """{(kind, value hash): when it was erased}, of those erased at ``since`` or later if given."""
    where, args = ("WHERE erased_at >= ?", [since]) if since is not None else ("", [])
    return {(kind, hashed): at for kind, hashed, at
            in control(con).execute(f"SELECT kind, value_hash, erased_at FROM erasures {where}", args).fetchall()}


def _began(row: dict) -> dt.datetime | None:
    ts = row.get("ts")
    if isinstance(ts, dt.datetime):
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=dt.UTC)
    try:
        found = dt.datetime.fromisoformat(str(ts))
    except ValueError:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=dt.UTC)


def without_erased(con: duckdb.DuckDBPyConnection, rows: list[dict], key: bytes | Callable[[], bytes]) -> list[dict]:
    """``rows`` less those of a subject erased after the call began (rows a writer held, in memory
    or a spill file, while the erase ran in another process or on another replica). One small query
    per flush, of the erasures since the oldest row began (only those can drop one: a deployment's
    thousands of older ones are not read each time). ``key`` (erasure_key) may be a function, called
    only if something was erased: the writer must not make the key file, which a full disk leaves
    empty (every flush then failed)."""
    began = [_began(row) for row in rows]
    known = [ts for ts in began if ts is not None]
    if not known:
        return rows
    erased = erasures(con, since=min(known))
    if not erased:
        return rows
    if callable(key):
        key = key()

    def gone(row: dict, ts: dt.datetime | None) -> bool:
        if ts is None:
            return False  # a time not to be read (a damaged spill file's): the insert quarantines the row
        for kind, value in (("customer", row.get("customer_id")), ("key", row.get("key_id"))):
            at = erased.get((kind, value_hash(key, str(value)))) if value is not None else None
            if at is not None and ts <= at:
                return True
        return False
    return [row for row, ts in zip(rows, began, strict=True) if not gone(row, ts)]
