"""Data subject requests: export everything stored about a customer or a key, or erase it.

Erasing deletes the subject's rows everywhere (calls, rollups, budgets, alert history, the
key itself), removes its rows from pending spill files, and rewrites the database into a fresh
file so the deleted values are gone from the bytes on disk too (see store/compact.py). It works
while the proxy runs: the proxy's writer waits for the file (and queues its rows) meanwhile.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from . import audit, spill
from . import home as home_dir
from .serialize import json_row
from .store import compact, lake, reading, subjects, writing
from .store.audit import ERASED
from .store.connection import is_shared
from .store.subjects import Subject

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)


def export(db: Path, spill_dir: Path, subject: Subject, out: IO[str]) -> dict[str, int]:
    """Write one JSON document about ``subject`` to ``out``, streaming its calls; returns counts."""
    counts = {}
    with reading(db, long_read=True) as con:
        small = subjects.small_tables(con, subject)
        out.write('{"subject": ' + json.dumps(subject.as_json()))
        out.write(', "exported_at": ' + json.dumps(dt.datetime.now(dt.UTC).isoformat()))
        for name, rows in small.items():
            out.write(f', "{name}": ' + json.dumps([json_row(r) for r in rows]))
            counts[name] = len(rows)
        for table in ("calls", "rollups"):
            counts[table] = _write_array(out, table, subjects.stream(con, table, subject))
    pending, unreadable = [], 0
    for path, spilled in _spill_rows(spill_dir):
        if spilled is None:
            log.error("spill file %s has an unreadable line; it is not in the export (a %s)", path, subject.kind)
            unreadable += 1
            continue
        pending += [row for row in spilled if _matches(row, subject)]
    out.write(', "pending_calls": ' + json.dumps([json_row(r) for r in pending]) + "}\n")
    counts["pending_calls"], counts["unreadable_spill_files"] = len(pending), unreadable
    with writing(db) as con:  # an export is a disclosure: the trail says who took it
        audit.record(con, "gdpr.export", f"{subject.kind}:{subject.value}", None, counts)
    return counts


def erase(db: Path, spill_dir: Path, subject: Subject) -> dict[str, int]:
    """Delete the subject everywhere and reclaim the space; returns what was removed."""
    with writing(db, timeout=60, alone=True) as con:
        counts = subjects.delete(con, subject)
        # The subject's identifier leaves the trail (before the rewrite below reclaims its bytes); this
        # erase's own entry does not name it either.
        audit.scrub(con, subject.kind, subject.value)
        audit.record(con, "gdpr.erase", f"{subject.kind}:{ERASED}", None, {k: v for k, v in counts.items()})
        # Under the write lock the proxy cannot replay spill files, so none is half-read by it now.
        counts["pending_calls"], counts["unreadable_spill_files"] = _scrub_spills(spill_dir, subject)
        # The proxy drops the subject's metric series, and every writer (this host's, other
        # replicas') the rows it still holds when those land.
        subjects.record_erasure(con, subject, subjects.erasure_key(con, db.parent))
        if is_shared(con):
            counts["lake_files"] = lake.scrub(con)
        else:
            counts["bytes_before"], counts["bytes_after"] = compact.rewrite(con, db)
    log.info("erased a %s: %s", subject.kind, counts)  # never the customer id itself: logs travel far
    return counts


class ErasureWatch:
    """In the proxy: subjects erased since the last look (by any process, on any replica) leave its
    metrics, so ``/metrics`` names an erased customer or key no more. Run by the writer's refresh."""

    def __init__(self, home: Path, metrics: Metrics) -> None:
        self.home, self.metrics = home, metrics
        self._seen: set[tuple[tuple[str, str], dt.datetime]] = set()
        self._key: bytes | None = None

    def check(self, con) -> None:
        fresh = {entry for entry in subjects.erasures(con).items() if entry not in self._seen}
        if not fresh:
            return
        self._seen |= fresh
        if self._key is None:
            self._key = subjects.erasure_key(con, self.home)
        erased = {kind_and_hash for kind_and_hash, _ in fresh}
        for kind in ("customer", "key"):
            for value in self.metrics.label_values(kind):
                if (kind, subjects.value_hash(self._key, value)) in erased:
                    self.metrics.forget(kind, value)


def _write_array(out: IO[str], name: str, rows: Iterator[dict]) -> int:
    out.write(f', "{name}": [')
    n = 0
    for row in rows:
        out.write((", " if n else "") + json.dumps(json_row(row)))
        n += 1
    out.write("]")
    return n


def _matches(row: dict, subject: Subject) -> bool:
    if subject.kind == "customer":
        return row.get("customer_id") == subject.value
    return str(row.get("key_id")) == subject.value


def _spill_files(spill_dir: Path) -> list[Path]:
    """The data directory's spill files and its workers' (``proxy --workers N``: <home>/workers/<slot>/spill)."""
    found = []
    for directory in home_dir.spill_dirs(spill_dir.parent):
        # Quarantined rows (stored never, replayed never) are the subject's data all the same.
        found += sorted(directory.glob("*.jsonl")) + sorted(directory.glob("quarantine/*.jsonl"))
    return found


def _spill_rows(spill_dir: Path) -> Iterator[tuple[Path, list[dict] | None]]:
    """(file, its rows) per spill file; rows None when a line is unreadable."""
    for path in _spill_files(spill_dir):
        try:
            rows, unreadable = spill.read(path)
        except (spill.Unreadable, OSError):  # sealed with another key, or gone
            yield path, None
            continue
        yield path, None if unreadable else rows


def _scrub_spills(spill_dir: Path, subject: Subject) -> tuple[int, int]:
    """Remove the subject's rows from spill files: (rows removed, files that could not be read)."""
    removed = unreadable = 0
    for path, rows in _spill_rows(spill_dir):
        if rows is None:  # torn by a crash in an older version; left for a person to look at
            log.error("spill file %s has an unreadable line; the erased %s was not removed from it", path, subject.kind)
            unreadable += 1
            continue
        kept = [row for row in rows if not _matches(row, subject)]
        if len(kept) == len(rows):
            continue
        removed += len(rows) - len(kept)
        if not kept:
            path.unlink()
            continue
        fresh = path.with_suffix(".scrub")
        spill.write(fresh, kept)
        os.replace(fresh, path)
    return removed, unreadable
