"""Copying an embedded database into shared storage (``aispendtrack migrate-to``).

The embedded file is attached read-only to the shared connection, so the calls and rollups
go into the lake in one INSERT ... SELECT each (straight to Parquet: no row passes through
Python). Control rows keep their ids, so keys, budgets scoped to a key and alert history mean
what they meant; the identity sequences then continue after the highest id. The destination must
be empty: merging two histories is not a copy.
"""

from __future__ import annotations

from pathlib import Path

from . import encryption, lake, migrations, rollups
from .errors import StoreError
from .shared import SharedConnection

# Control tables copied, with their columns (the same in both modes).
_CONTROL_TABLES = {
    "teams": ["id", "name", "created_at"],
    "keys": ["id", "name", "key_hash", "prefix", "created_at", "revoked_at", "plan", "per_hour_limit",
             "per_month_limit", "retention_days", "team_id"],
    "admin_tokens": ["id", "name", "token_hash", "created_at", "revoked_at"],
    "budgets": ["id", "scope", "scope_value", "daily_usd", "monthly_usd", "block", "created_at", "key_id"],
    "alerts": ["id", "sent_at", "kind", "subject", "channel", "destination", "delivered", "error", "dedupe_key"],
    "config": ["name", "value", "updated_at"],
    "audit": ["id", "changed_at", "actor", "action", "target", "before", "after"],
    "batches": ["provider", "batch_id", "key_id", "customer_id", "feature", "created_at", "results_ref", "recorded_at"],
}
_ROW_TABLES = ("calls", *(tier.table for tier in rollups.TIERS))


def copy_embedded(source: Path, con: SharedConnection) -> dict[str, int]:
    """Copy everything in the embedded file ``source`` into the (empty) shared storage of ``con``."""
    db = con.control
    present = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
               for t in ("teams", "keys", "budgets", "admin_tokens", "config_files")}
    present.update({t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _ROW_TABLES})
    if any(present.values()):
        found = ", ".join(f"{n:,} {t}" for t, n in present.items() if n)
        raise StoreError(f"The shared storage at {con.cfg.where} already holds data ({found}); migrate-to copies "
                         f"into an empty catalog only. Use a new PostgreSQL database.")
    quoted = str(source).replace("'", "''")
    key = encryption.configured_key()
    con.execute(f"ATTACH '{quoted}' AS embedded {encryption.attach_clause(key, True) if key else '(READ_ONLY)'}")
    try:
        if not migrations.is_current(con.duck, "embedded"):
            raise StoreError(f"{source} is from an older version: open it once with this version's CLI "
                             f"(`aispendtrack --home {source.parent} keys list`) to bring it up to date, then retry.")
        counts = {}
        for table, columns in _CONTROL_TABLES.items():
            names = ", ".join(columns)
            rows = con.execute(f"SELECT {names} FROM embedded.{table}").fetchall()
            if table == "config":  # the destination's own settings (its data path) stay
                db.pg.cursor().executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))}) "
                                           f"ON CONFLICT (name) DO NOTHING", rows)
            else:
                db.pg.cursor().executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})",
                                           rows)
                if "id" in columns:
                    db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")
            counts[table] = len(rows)
        for table in _ROW_TABLES:
            columns = [name for (name,) in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = 'embedded' AND table_name = ?",
                [table]).fetchall()]
            names = ", ".join(columns)
            con.execute(f"INSERT INTO lake.main.{table} ({names}) SELECT {names} FROM embedded.{table}")
            counts[table] = con.execute(f"SELECT count(*) FROM lake.main.{table}").fetchone()[0]
        # A small table (a rollup tier of few models) was inlined into the catalog: into files now,
        # not at the first maintenance, so that the first reports do not read it from PostgreSQL.
        lake.flush(con.duck)
        return counts
    finally:
        con.execute("DETACH embedded")
