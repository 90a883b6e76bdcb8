"""The proxy's one writer thread: the only code in the proxy process that touches the database.

The request path only calls ``submit`` (a queue put). This thread turns finished calls into
rows (a call of a batch API can add rows of the batch's usage, settled against the store before
they are written: addon/batches.py), writes them in batches, and refreshes the key snapshot from the same connection, so
the proxy never opens the file twice with different settings. It holds the file only while
it flushes, so CLI and web readers in other processes get their turn in between.

Nothing is dropped: if the database cannot be written (locked, read-only, disk full) rows
stay queued and are retried each cycle; past ``spill_after`` rows or seconds they are
appended to a JSON-lines file under ``spill/`` (sealed when the store is encrypted:
core/spill.py) and replayed, exactly once, when the database is writable again (also after
a restart). When the spill directory cannot be written either (the same full or read-only
disk), rows wait in memory, up to ``max_pending`` (~1 KB each).

One bad row never blocks the others: when a batch is refused for its data (a value the table
cannot hold), the rows are stored one by one and the ones still refused are set aside in
``spill/quarantine/`` with the reason, and a log line. They are not retried, so they cannot wedge
the writer or survive a restart as a poison pill. Keys are refreshed in a step of their own, so
a failing row write never keeps a revoked key working.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import duckdb

from .core import spill
from .core.redact import first_line
from .core.store import StoreBusy, StoreError, calls, shared, subjects
from .core.store.connection import OwnerAway, is_shared, writing

log = logging.getLogger(__name__)

SPILL_RETRY_SECONDS = 30
# How long rows may wait for a file another reader holds before the log says so: calls show in
# reports within ~2 s under load, so 5 s is a delay someone could notice.
BUSY_PATIENCE_S = 5.0
UNREACHABLE_SPILL_S = 1.0  # rows wait this long in memory for a store that is away, then in spill files
QUARANTINE_DIR = "quarantine"  # under the spill directory; replay never reads it, GDPR requests do
# Errors about the rows themselves, not the database: retrying them can never succeed.
_ROW_ERRORS = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException,
               TypeError, ValueError, KeyError, OverflowError)


class Writer(threading.Thread):
    def __init__(self, db_path: Path, spill_dir: Path, build_row: Callable[[object], dict | list[dict]],
                 on_refresh: Callable[[object], None], flush_interval: float = 1.0,
                 key_refresh: float = 2.0, spill_after_rows: int = 10_000, spill_after_seconds: float = 30.0,
                 on_cycle: Callable[[], None] | None = None, max_pending: int = 500_000,
                 sync: Callable[[], None] | None = None, sync_interval: float = 0.25,
                 settle: Callable[[object, list[dict]], list[dict]] | None = None,
                 on_written: Callable[[float], None] | None = None):
        super().__init__(name="aispendtrack-writer", daemon=True)
        self.db_path, self.spill_dir = db_path, spill_dir
        cfg = shared.configured()
        self.where = f"the shared storage at {cfg.where}" if cfg else str(db_path)  # for log lines
        # on_refresh(connection) reloads what the request path keeps in memory (keys, limits).
        self.build_row, self.on_refresh, self.on_cycle = build_row, on_refresh, on_cycle
        # settle(connection, rows): what rows need from the store before they are stored (batches.py);
        # it returns the rows to try again at the next cycle, held meanwhile.
        self.settle = settle
        self.on_written = on_written  # on_written(seconds): how long a cycle that stored rows took
        self._held: list[dict] = []
        # Shared mode: sync() sends this replica's budget spend and fetches everyone's, every
        # sync_interval, between flushes, so a budget crossed on one replica blocks all within 1 s.
        self.sync, self.sync_interval = sync, sync_interval
        self.flush_interval, self.key_refresh = flush_interval, key_refresh
        self.spill_after_rows, self.spill_after_seconds = spill_after_rows, spill_after_seconds
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: list[dict] = []
        self._erasure_key: bytes | None = None
        self._stopping = threading.Event()
        self._keys_due = 0.0
        self._failing_since: float | None = None
        self._last_warning = self._last_sync_warning = -1e9
        self._warned = False  # a warning about this failure was logged: say when it is over
        # After a failed write, whether the rows were stored is unknown (a commit that failed to
        # answer may have landed, above all on a remote catalog): the retry skips stored ids.
        self._uncertain = False
        self._spill_retry_at = 0.0
        self._last_drop_log = -1e9
        self._spill_seq = 0
        self._refresh_said_at = -1e9
        self._replayed: set[Path] = set()  # spill files stored that could not be removed: never replayed again here
        self._spilled_at = self._spill_said_at = -1e9  # the last spill, the last one logged
        self.rows_written = 0
        self.rows_dropped = 0
        self.max_pending = max_pending

    def submit(self, item: object) -> None:
        """Called on the request path: never blocks, never raises."""
        self._queue.put(item)

    def stats(self) -> dict[str, int]:
        """For the metrics, from any thread: a moment's figures, not a consistent snapshot."""
        return {"queue": self._queue.qsize() + len(self._pending) + len(self._held),
                "spill_files": len(self._spill_files()), "written": self.rows_written, "dropped": self.rows_dropped}

    def load_keys_now(self, timeout: float = 10.0) -> None:
        """Before serving: migrate the schema and load the keys (blocking, at start-up only).
        Later cycles skip the schema check: this process is the file's only writer of rows."""
        with writing(self.db_path, timeout=timeout) as con:
            if is_shared(con):  # the lake too: a proxy that cannot write its rows there does not start
                cast(shared.SharedConnection, con).attach()
            # What an earlier run spilled is stored first, so the counts seeded from the store hold its
            # calls: a restart never grants a fresh limit or budget. (Workers' are counted by their owner.)
            try:
                self._replay(con, self._spill_files())
            except Exception as exc:  # the first cycles try again; the proxy starts all the same (a
                # warning: mitmproxy ends a proxy that logs an error while it starts)
                log.warning("could not store the rows an earlier run spilled to %s before starting (%s); "
                            "the next flushes try again", self.spill_dir, first_line(exc, 300))
            self.on_refresh(con)
        self._keys_due = time.monotonic() + self.key_refresh

    def run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval
        while not self._stopping.is_set():
            if self.sync is None:
                self._stopping.wait(self.flush_interval)
            else:
                self._stopping.wait(max(0.0, min(self.sync_interval, next_flush - time.monotonic())))
                self._drain()
                self._sync()
            if self.sync is None or time.monotonic() >= next_flush:
                self.cycle(lock_timeout=0.2)
                next_flush = time.monotonic() + self.flush_interval

    def _sync(self) -> None:
        assert self.sync is not None
        try:
            self.sync()
        except Exception as exc:  # the shared store is away: the local counts go on, the next tick retries
            if time.monotonic() - self._last_sync_warning > 30:
                self._last_sync_warning = time.monotonic()
                log.warning("cannot share budget spend (%s: %s); each replica counts its own until it can",
                            type(exc).__name__, first_line(exc, 200))

    def stop(self, timeout: float = 12.0) -> None:
        """Flush everything; whatever the database will not take now goes to a spill file. ``timeout``:
        for the writer thread's cycle under way, past a worker's bound on its owner's answers
        (remote.WORKER_ANSWER_S), so that two cycles never run at once."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
        self.cycle(lock_timeout=5.0, force_keys=False)
        self._pending += self._held  # rows waiting to be settled are settled after the restart
        self._held = []
        if self._pending:
            self._spill(force=True)
        if self._pending:  # neither the database nor the spill directory takes them: the last chance
            self._spill_elsewhere()

    def _spill_elsewhere(self) -> None:
        """At a stop with the data directory's disk full: the rows go to the system's temporary
        directory, for a person to move into the spill directory (they are replayed from there);
        said at the critical level either way, never an exit as if all went well."""
        aside = Path(tempfile.gettempdir()) / f"aispendtrack-unwritten-{time.time_ns()}-{os.getpid()}.jsonl"
        try:
            spill.write(aside, self._pending)
        except (OSError, StoreError) as exc:
            self.rows_dropped += len(self._pending)
            log.critical("%d rows are lost: neither %s, %s nor %s could be written at the stop (%s)",
                         len(self._pending), self.where, self.spill_dir, aside.parent, exc)
        else:
            log.critical("%d rows could not be written to %s nor %s at the stop: they are in %s; move that file "
                         "into %s once there is room, and they are stored at the next start",
                         len(self._pending), self.where, self.spill_dir, aside, self.spill_dir)
        self._pending = []

    def cycle(self, lock_timeout: float, force_keys: bool | None = None) -> None:
        started = time.monotonic()
        self._drain()
        if self.on_cycle is not None:
            self.on_cycle()
        keys_due = time.monotonic() >= self._keys_due if force_keys is None else force_keys
        spills = self._spill_files()
        if not (self._pending or spills or keys_due):
            return
        wrote = False
        try:
            with writing(self.db_path, timeout=lock_timeout, migrate=False) as con:
                try:
                    self._replay(con, spills)
                    if self._pending:
                        self._store(con, self._pending, skip_existing=self._uncertain)
                        self._uncertain = False
                        wrote = True
                finally:  # after the rows (new budgets are seeded from them), and even if they failed
                    if keys_due:
                        self._refresh(con)
            if wrote and self.on_written is not None:
                self.on_written(time.monotonic() - started)
            if self._warned:
                log.warning("wrote the waiting rows to %s after %.0f s; nothing was lost", self.where,
                            time.monotonic() - (self._failing_since or time.monotonic()))
            self._failing_since, self._warned, self._last_warning = None, False, -1e9
        except Exception as exc:  # locked, read-only, disk full, storage away...: keep the rows, try again
            self._uncertain = True
            self._on_failure(exc, started)

    def _refresh(self, con) -> None:
        try:
            self.on_refresh(con)
        except Exception as exc:  # the next cycle tries again; rows are written meanwhile
            if time.monotonic() - self._refresh_said_at > 30:  # a traceback a second would drown the log
                self._refresh_said_at = time.monotonic()
                log.exception("could not refresh keys, limits and budgets from %s (said once in 30 s)", self.where)
            else:
                log.debug("could not refresh keys, limits and budgets: %s", type(exc).__name__)
            return
        self._keys_due = time.monotonic() + self.key_refresh

    def _store(self, con, rows: list[dict], skip_existing: bool = False) -> None:
        """Insert ``rows`` and empty the list. Rows the table refuses go to quarantine; a failure of
        the database itself raises, leaving the rows not yet stored in the list."""
        # Rows of a subject erased since their call began are not stored: those this process (or a
        # replica) held in memory or in a spill file while the erase ran, which it could not reach.
        # Before a batch's are settled: settling records the batch with its creator's tags, which its
        # results' rows, made after the erase, would have taken.
        kept = subjects.without_erased(con, rows, lambda: self._key_of_erasures(con))
        if len(kept) < len(rows):
            log.info("dropped %d unwritten rows of an erased customer or key", len(rows) - len(kept))
            rows[:] = kept
        if self.settle is not None:
            self._held += self.settle(con, rows)
        try:
            self.rows_written += calls.insert(con, rows, skip_existing)
        except _ROW_ERRORS:
            # One bad row fails the whole statement: store them singly to find it. skip_existing,
            # so a retry after a database failure part way never stores a row twice.
            while rows:
                try:
                    self.rows_written += calls.insert(con, rows[-1:], skip_existing=True)
                except _ROW_ERRORS as exc:
                    self._quarantine(rows[-1], exc)
                rows.pop()
        rows.clear()

    def _key_of_erasures(self, con) -> bytes:
        if self._erasure_key is None:
            self._erasure_key = subjects.erasure_key(con, self.db_path.parent)
        return self._erasure_key

    def _quarantine(self, row: dict, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {first_line(exc)}" if str(exc) else type(exc).__name__
        directory = self.spill_dir / QUARANTINE_DIR
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._spill_seq += 1
            path = directory / f"{time.time_ns()}-{os.getpid()}-{self._spill_seq}.jsonl"
            spill.write(path, [{**row, "quarantine_reason": reason}])
        except (OSError, StoreError) as write_error:
            log.error("cannot quarantine call %s (%s); it is dropped", row.get("id"), write_error)
            return
        # The reason can quote the row's values (a customer id), so the log names only its type.
        log.error("call %s could not be stored (%s) and was set aside in %s", row.get("id"),
                  type(exc).__name__, path)

    def _drain(self) -> None:
        if self._held:
            self._pending += self._held
            self._held = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            # build_row never raises: on a parsing or pricing bug it falls back to a row without usage.
            built = self.build_row(item)
            self._pending.extend(built if isinstance(built, list) else [built])

    def _on_failure(self, exc: Exception, started: float) -> None:
        now = time.monotonic()
        # From the attempt's start: an owner that does not answer takes remote.WORKER_ANSWER_S to say so.
        self._failing_since = self._failing_since or started
        waited = now - self._failing_since
        # Rows wait in memory for a file a reader holds a moment (that is how it is shared). Any other
        # failure (PostgreSQL or the lake away, a worker's owner restarting) may last, and meanwhile
        # this process holds the only copy of its rows: were it killed too (the OOM killer, a deploy)
        # it would lose every call it served since. They go to a spill file within a second.
        patience = (self.spill_after_seconds if isinstance(exc, StoreBusy) and not isinstance(exc, OwnerAway)
                    else min(UNREACHABLE_SPILL_S, self.spill_after_seconds))
        # A reader holding the file for a moment is how sharing it works: the rows go in at a later
        # cycle, and a line per cycle would only alarm. Only a wait long enough to delay what reports
        # show is worth a line; any other failure (disk full, storage away) needs a person at once.
        busy = isinstance(exc, StoreBusy)
        if (not busy or waited >= BUSY_PATIENCE_S) and now - self._last_warning > 30:
            self._last_warning, self._warned = now, True
            cause = first_line(exc, 300) if busy else f"{type(exc).__name__}: {first_line(exc, 200)}"
            cause = cause.rstrip(".")  # the sentence's own full stop follows ("waited 0.2 s.. The")
            log.warning("cannot write %s for %.0f s: %s. The %d rows waiting are safe: kept in memory and "
                        "retried every %.1f s (put in %s after %.0f s); they show in reports once written.",
                        self.where, waited, cause, len(self._pending), self.flush_interval, self.spill_dir,
                        patience)
        # Once a second at most: a long outage leaves a file a second, not one every flush.
        if len(self._pending) >= self.spill_after_rows or (
                self._pending and waited >= patience and now - self._spilled_at >= UNREACHABLE_SPILL_S):
            self._spill()

    def _spill(self, force: bool = False) -> None:
        # After a failed spill, wait before the next try: each try serialises every pending row,
        # which must not happen every second while the disk stays full.
        if not force and time.monotonic() < self._spill_retry_at:
            self._cap_memory()
            return
        try:
            self._write_spill()
        except (OSError, StoreError) as exc:  # the disk is full or read-only too: keep the rows in memory, up to a cap
            self._spill_retry_at = time.monotonic() + SPILL_RETRY_SECONDS
            log.error("cannot spill %d rows to %s either (%s); keeping them in memory, next try in %d s",
                      len(self._pending), self.spill_dir, exc, SPILL_RETRY_SECONDS)
            self._cap_memory()

    def _cap_memory(self) -> None:
        excess = len(self._pending) - self.max_pending
        if excess <= 0:
            return
        del self._pending[:excess]  # the only place rows are ever dropped: memory must stay bounded
        self.rows_dropped += excess
        if time.monotonic() - self._last_drop_log > SPILL_RETRY_SECONDS:
            self._last_drop_log = time.monotonic()
            log.critical("dropping the oldest unwritten rows (%d in all so far): neither the database nor %s "
                         "could be written for too long", self.rows_dropped, self.spill_dir)

    def _write_spill(self) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self._spill_seq += 1
        path = self.spill_dir / f"{time.time_ns()}-{os.getpid()}-{self._spill_seq}.jsonl"
        # Written under another name and renamed: a *.jsonl file is always complete, so a replay
        # or a GDPR erase in another process never reads one half-written.
        partial = path.with_suffix(".partial")
        try:
            spill.write(partial, self._pending)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)  # a full disk's last bytes are not kept by a failed try
            raise
        self._spilled_at = time.monotonic()
        if self._spilled_at - self._spill_said_at >= 30:  # a line a second through an outage would drown the log
            self._spill_said_at = self._spilled_at
            log.warning("spilled %d rows to %s; they are written once the database is writable (more spills "
                        "of this outage are not logged for 30 s)", len(self._pending), path)
        self._pending = []

    def _spill_files(self) -> list[Path]:
        if not self.spill_dir.is_dir():
            return []
        return sorted(p for p in self.spill_dir.glob("*.jsonl") if p not in self._replayed)

    def _replay(self, con, paths: list[Path]) -> None:
        """Store the rows of spill files, many files to an insert (an outage leaves one a second: one
        lake commit each would hold this thread for minutes), then remove them: a crash between the
        two stores none twice (the replay skips stored ids)."""
        group: list[Path] = []
        rows: list[dict] = []
        for path in paths:
            found = self._spilled_rows(path)
            if found is None:
                continue
            group.append(path)
            rows += found
            if len(rows) >= self.spill_after_rows:
                self._store_replayed(con, group, rows)
                group, rows = [], []
        if group:
            self._store_replayed(con, group, rows)

    def _spilled_rows(self, path: Path) -> list[dict] | None:
        try:
            rows, unreadable = spill.read(path)
        except spill.Unreadable as exc:  # sealed with another key: kept for a person, never retried
            aside = self.spill_dir / QUARANTINE_DIR / path.name
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, aside)
            # A warning: an error logged while mitmproxy starts ends the proxy, for a file set aside.
            log.warning("%s; its rows are not stored, and the file is set aside in %s", exc, aside)
            return None
        if unreadable:  # lines cut short by a crash while spilling (older versions)
            log.warning("skipping %d unreadable lines of %s", unreadable, path)
        return rows

    def _store_replayed(self, con, paths: list[Path], rows: list[dict]) -> None:
        before = self.rows_written
        self._store(con, rows, skip_existing=True)  # a crash after insert, before unlink: no doubles
        for path in paths:
            try:
                path.unlink()
            except OSError as exc:  # stored all the same: the new rows must not wait for this file
                self._replayed.add(path)
                log.error("stored the rows of spill file %s but cannot remove it (%s); remove it by hand (a "
                          "restart would replay it, skipping the rows stored)", path, exc)
        log.info("replayed %d rows from %s in %s", self.rows_written - before,
                 "1 spill file" if len(paths) == 1 else f"{len(paths)} spill files", self.spill_dir)
