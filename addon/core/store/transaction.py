"""One transaction on a store connection: DuckDB's, over the embedded file or the lake."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection, appends: bool = False) -> Iterator[None]:
    """The statements run inside committed as one, or, if anything inside (or the commit) raises,
    none of them: the rows and the rollups that sum them change together or not at all. On the
    shared storage, in this replica's turn among the lake's writers (``lake_turn``)."""
    with lake_turn(con, appends):
        con.execute("BEGIN TRANSACTION")
        try:
            yield
            con.execute("COMMIT")
        except BaseException:
            # A commit that failed has ended the transaction already; the error to see is the first.
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise


def lake_turn(con: duckdb.DuckDBPyConnection, appends: bool = False) -> contextlib.AbstractContextManager:
    """Around a write of the lake on the shared storage: this replica's turn among the catalog's
    writers (SharedConnection.writing_lake), shared with other ``appends`` (rows only added, as a
    flush does); nothing on the embedded file, whose writers DuckDB orders itself."""
    from .shared import SharedConnection

    return con.writing_lake(appends) if isinstance(con, SharedConnection) else contextlib.nullcontext()


def is_write_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is DuckDB refusing a change because another transaction changed the same rows
    first (that transaction rolled back whole, so running it again is safe)."""
    return isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower()
