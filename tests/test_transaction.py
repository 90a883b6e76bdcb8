"""store/transaction.py on a real DuckDB file: all of a transaction's statements, or none."""

from __future__ import annotations

import duckdb
import pytest

from addon.core.store.transaction import transaction


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "t.duckdb"))
    connection.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    yield connection
    connection.close()


def rows(con) -> list[int]:
    return [n for (n,) in con.execute("SELECT n FROM t ORDER BY n").fetchall()]


def test_the_statements_inside_are_committed_together(con):
    with transaction(con):
        con.execute("INSERT INTO t VALUES (1)")
        con.execute("INSERT INTO t VALUES (2)")
    with transaction(con):
        con.execute("INSERT INTO t VALUES (3)")
    assert rows(con) == [1, 2, 3]


def test_an_error_inside_undoes_every_statement_and_is_the_one_raised(con):
    with pytest.raises(ValueError, match="bookkeeping"):
        with transaction(con):
            con.execute("INSERT INTO t VALUES (1)")
            raise ValueError("bookkeeping failed")
    with pytest.raises(duckdb.ConstraintException, match="duplicate key"):
        with transaction(con):
            con.execute("INSERT INTO t VALUES (5)")
            con.execute("INSERT INTO t VALUES (5)")
    assert rows(con) == []
    with transaction(con):  # the connection is usable afterwards
        con.execute("INSERT INTO t VALUES (7)")
    assert rows(con) == [7]
