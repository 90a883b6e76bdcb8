"""SQL for the ``batches`` table: each batch the proxy saw, whose it is, and whether its usage is recorded.

A control table (PostgreSQL in the shared mode), so that every replica claims a batch's usage in the
same place and exactly one of them records it (addon/batches.py).
"""

from __future__ import annotations

import datetime as dt

import duckdb

from .connection import control

Tags = tuple  # (key_id, customer_id, feature)


def remember(con: duckdb.DuckDBPyConnection, provider: str, batch_id: str, results_ref: str | None,
             tags: Tags, at: dt.datetime) -> None:
    """A batch and the tags of the call that created it (kept when it is known already). A batch first
    seen by a later call (created around the proxy) gets that call's tags. ``results_ref``: the id of
    its results file, where it has one of its own (OpenAI's output file)."""
    control(con).execute(
        "INSERT INTO batches (provider, batch_id, key_id, customer_id, feature, created_at, results_ref) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (provider, batch_id) DO UPDATE SET "
        "results_ref = coalesce(excluded.results_ref, batches.results_ref)",
        [provider, batch_id, *tags, at, results_ref])


UNKNOWN = object()  # claim(): no batch is known by that reference


def claim(con: duckdb.DuckDBPyConnection, provider: str, ref: str, at: dt.datetime) -> Tags | None | object:
    """Mark the batch whose results ``ref`` names (its id, or its results file's id) as recorded, and
    return its creator's tags; None when it was recorded already; UNKNOWN when no batch has ``ref``."""
    ctl = control(con)
    found = ctl.execute(
        "UPDATE batches SET recorded_at = ? WHERE provider = ? AND (batch_id = ? OR results_ref = ?) "
        "AND recorded_at IS NULL RETURNING key_id, customer_id, feature", [at, provider, ref, ref]).fetchall()
    if found:
        return tuple(found[0])
    known = ctl.execute("SELECT 1 FROM batches WHERE provider = ? AND (batch_id = ? OR results_ref = ?)",
                        [provider, ref, ref]).fetchall()
    return None if known else UNKNOWN


def adopt(con: duckdb.DuckDBPyConnection, provider: str, ref: str, tags: Tags, at: dt.datetime) -> Tags | None | object:
    """A batch the proxy never saw created (``ref`` names its results): remembered now, with ``tags``,
    as recorded. Should it have appeared meanwhile, it is claimed as usual."""
    inserted = control(con).execute(
        "INSERT INTO batches (provider, batch_id, key_id, customer_id, feature, created_at, results_ref, recorded_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (provider, batch_id) DO NOTHING "
        "RETURNING key_id, customer_id, feature", [provider, ref, *tags, at, ref, at]).fetchall()
    return tuple(inserted[0]) if inserted else claim(con, provider, ref, at)


def forget_tags(con: duckdb.DuckDBPyConnection, cutoffs: dict[int | None, dt.datetime]) -> int:
    """Retention: the batches created before their key's cutoff (``None``: batches of no key) no longer
    say whose they were; each stays known, so its usage is still recorded once. How many lost them."""
    if not cutoffs:  # every key keeps its calls forever
        return 0
    keys = [-1 if key_id is None else key_id for key_id in cutoffs]
    return len(control(con).execute(
        "UPDATE batches SET key_id = NULL, customer_id = NULL, feature = NULL "
        "FROM (SELECT unnest(?::INTEGER[]) AS key_id, unnest(?::TIMESTAMPTZ[]) AS cutoff) p "
        "WHERE coalesce(batches.key_id, -1) = p.key_id AND batches.created_at < p.cutoff "
        "AND (batches.key_id IS NOT NULL OR batches.customer_id IS NOT NULL OR batches.feature IS NOT NULL) "
        "RETURNING batch_id", [keys, list(cutoffs.values())]).fetchall())


def forget_subject(con: duckdb.DuckDBPyConnection, condition: str, params: list) -> int:
    """An erase: the subject's batches (``condition`` on the table's tags) keep no tag at all."""
    return len(control(con).execute(
        f"UPDATE batches SET key_id = NULL, customer_id = NULL, feature = NULL WHERE {condition} RETURNING batch_id",
        params).fetchall())
