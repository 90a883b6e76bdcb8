"""The shared storage when the network to its catalog is cut: PostgreSQL on the far side of a link
(tests/pg.py's Link, a network namespace) that the test cuts, so what is sent to it is lost with no
error coming back. DuckDB's sessions to the catalog, already open, waited ~15 minutes for the OS's
retransmissions; the read holding one kept a slot of the process's few all along."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest

from .pg import Cluster, Link

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root (CAP_NET_ADMIN)")


@pytest.fixture(scope="module")
def cluster():
    """conftest's ``cluster`` (and so ``shared_env``'s catalog) behind a link the tests cut."""
    link = Link()
    try:
        running = Cluster(link)
    except BaseException:
        link.remove()
        raise
    yield running
    link.mend()
    running.remove()
    link.remove()


def _failure_within(read: Callable[[], object], seconds: float, link: Link) -> tuple[BaseException | None, float]:
    """What ``read`` raised and after how long, waiting ``seconds`` at most; past that the link is
    mended (so the read ends, as the test's thread must) and the test fails."""
    outcome: list = []

    def run() -> None:
        start = time.monotonic()
        try:
            read()
            outcome.append((None, time.monotonic() - start))
        except BaseException as exc:
            outcome.append((exc, time.monotonic() - start))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        link.mend()
        thread.join(60)
        pytest.fail(f"the read still waited after {seconds} s on a cut network")
    return outcome[0]


@pytest.mark.parametrize("when", ["before the statement", "while it waits for its answer"])
def test_a_read_on_a_cut_network_fails_in_seconds_and_the_next_one_after_it_is_mended_is_answered(
        cluster, shared_env, tmp_path, when):
    """Cut before the statement is sent, it goes unacknowledged (tcp_user_timeout); cut while the
    server works on it (here: waits for a lock another session holds), nothing more is sent and the
    keepalives go unanswered. Either way the read gets one line after shared.DEAD_SESSION_S, where
    it waited 100 s and more (ended then by mending the link), and the storage is used again."""
    import psycopg

    from addon.core.store import reading, shared

    db = tmp_path / "unused.duckdb"
    with reading(db) as con:
        assert con.execute("SELECT count(*) FROM calls").fetchone() == (0,)  # the lake attached
    # Over the server's Unix socket, which the cut leaves alone.
    holder = psycopg.connect(host=str(cluster.dir), port=cluster.port, user="aispend",
                             dbname=shared_env.rpartition("/")[2])
    cut = threading.Timer(1.0, cluster.link.cut)

    def read() -> None:
        with reading(db) as con:
            if when == "before the statement":
                cluster.link.cut()
                con.execute("SELECT count(*) FROM calls").fetchall()
            else:
                holder.execute("LOCK TABLE aispendtrack.teams IN ACCESS EXCLUSIVE MODE")
                cut.start()
                con.execute("SELECT count(*) FROM ctl.aispendtrack.teams").fetchall()

    try:
        failed, after = _failure_within(read, shared.DEAD_SESSION_S + 15, cluster.link)
    finally:
        cut.cancel()
        holder.close()
        cluster.link.mend()
    assert isinstance(failed, shared.SharedUnavailable), repr(failed)
    assert shared.DEAD_SESSION_S - 2 <= after <= shared.DEAD_SESSION_S + 10, after
    assert str(failed).startswith(f"the shared storage at {shared.configured().where} failed ("), failed
    assert "\n" not in str(failed)
    with reading(db) as con:
        assert con.execute("SELECT count(*) FROM calls").fetchone() == (0,)


def test_a_turn_at_writing_the_lake_held_across_a_cut_network_is_given_back(cluster, shared_env, tmp_path):
    """A replica that holds its turn at writing the lake (a PostgreSQL advisory lock, here alone,
    as a reprice does) when its network is cut gives up its end; the server kept its own end, and
    the lock with it, for its OS's keepalive time (~2 hours: every flush of every replica waiting).
    The server's end now ends within shared.DEAD_SESSION_S too, and the next change takes the turn."""
    import psycopg

    from addon.core.store import shared, shared_schema, writing
    from addon.core.store.transaction import lake_turn

    db = tmp_path / "unused.duckdb"
    with writing(db) as con:
        with lake_turn(con):
            time.sleep(1)  # every answer acknowledged: an idle session, as a holder waiting on DuckDB's work
            cluster.link.cut()
            time.sleep(shared.DEAD_SESSION_S + 5)
    cluster.link.mend()
    shared.drop()
    # Over the server's Unix socket: what any other replica would find.
    with psycopg.connect(host=str(cluster.dir), port=cluster.port, user="aispend",
                         dbname=shared_env.rpartition("/")[2], autocommit=True) as other:
        deadline = time.monotonic() + 20
        while not other.execute("SELECT pg_try_advisory_lock(%s)", [shared_schema.LAKE_WRITES_LOCK]).fetchone()[0]:
            assert time.monotonic() < deadline, "the turn is still held by the cut session"
            time.sleep(0.5)
