"""One transaction on a store connection: DuckDB's, over the embedded file or the lake."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The statements run inside committed as one, or, if anything inside (or the commit) raises,
    none of them: the rows and the rollups that sum them change together or not at all."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        # A commit that failed has ended the transaction already; the error to see is the first.
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
