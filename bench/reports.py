"""Report and export speed at 10 million calls (90 days, 10k customers, 50 features, skewed models).

    .venv/bin/python -m bench.reports                 # 10M rows: ~2 minutes, ~2 GB of disk in /tmp
    .venv/bin/python -m bench.reports --rows 1000000  # smaller
    .venv/bin/python -m bench.reports --rows 100000000 --days 365 --customers 100000  # issue 28's size: ~8 GB
    .venv/bin/python -m bench.reports --home DIR      # keep the calls in DIR; reuse them when there
    .venv/bin/python -m bench.reports --exact         # each report also as a raw scan (report --exact)
                                                      # and from the tiers before the narrow ones, 15-minute
    .venv/bin/python -m bench.reports --shared        # the same rows also in the shared mode's lake
                                                      # (a throwaway PostgreSQL; needs Debian's postgresql),
                                                      # and what waits there beside a long report

Reports read the rollups (store/rollups.py: the weekly tier of customers or features, daily or
hourly without customer and feature when a report names neither, else 15-minute) as the CLI and the
API do; the storage line gives the MB of the calls and of each rollup tier. Targets on a 2-core
machine: each report <= 1 s (as the API and ``--format json`` compute it; the CLI table's total
line adds a pass for its percentiles, shown beside it), CSV export >= 500k rows/s, and export
memory that does not grow with the row count (10M rows must not need more memory than 1M).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from addon.core import home as home_dir
from addon.core.reports import parse_report
from addon.core.store import reading, rollups, synthetic, writing
from addon.core.store import reports as report_rows
from addon.core.store.connection import one
from cli.progress import running

END = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
# (dimensions, parse_report's options; ``limit``: the first that many groups, as the page and the API ask)
REPORTS: list[tuple[list[str], dict[str, str | int]]] = [
    (["model"], {}), (["customer"], {}), (["customer"], {"limit": 50}), (["feature"], {}), (["key"], {}),
    (["provider"], {}),
    (["day"], {}), (["month"], {"tz": "America/Los_Angeles"}), (["model", "day"], {}),
    (["feature"], {"since": "7d"}), (["day"], {"customer": "cust-1"}),
    (["day"], {"customer": "cust-7777"}),  # the largest customer's days, and a customer's of ~1/50,000 of the calls
]
# Run in a child process so that its peak memory is its own.
_EXPORT_CHILD = """
import resource, sys, time
from addon.core.reports import parse_selection
from addon.core.store import reading
from addon.core.store import reports as report_rows
db, out, since = sys.argv[1], sys.argv[2], sys.argv[3] or None
selection = parse_selection(since=since)
with reading(__import__("pathlib").Path(db)) as con:
    rows = report_rows.count(con, selection)
    start = time.perf_counter()
    report_rows.copy_out(con, selection, out, "csv")
    elapsed = time.perf_counter() - start
print(rows, elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def build(db: Path, rows: int, days: int, customers: int) -> float:
    start = time.perf_counter()
    with writing(db) as con, running(f"Generating {rows:,} rows"):
        synthetic.generate(con, rows, end=END, days=days, customers=customers)
    return time.perf_counter() - start


@contextlib.contextmanager
def only_tiers(tiers: tuple[rollups.Tier, ...]) -> Iterator[None]:
    """Reports as they were before some tiers: read only ``tiers`` (for comparison), the 15-minute
    one too where a raw scan now answers in its place (reports.RAW_OVER_FINE)."""
    chosen, instead = report_rows._source, report_rows.RAW_OVER_FINE
    report_rows._source = functools.partial(chosen, tiers=tiers)
    report_rows.RAW_OVER_FINE = tiers == rollups.TIERS
    try:
        yield
    finally:
        report_rows._source, report_rows.RAW_OVER_FINE = chosen, instead


def time_reports(db: Path, end: dt.datetime, exact: bool = False,
                 tiers: tuple[rollups.Tier, ...] = rollups.TIERS) -> list[tuple[str, float, float, int]]:
    """(label, seconds for the groups as the API and --format json return them, seconds with the
    table's total line, groups); ``end``: the data's; ``exact``: scanning raw rows instead of the
    rollups; ``tiers``: the rollup tiers reports may read."""
    results = []
    with reading(db) as con, only_tiers(tiers):
        for dims, options in REPORTS:
            limit = options.get("limit")
            assert limit is None or isinstance(limit, int)
            # a fixed "now": the data's end
            spec = parse_report(dims, now=end, **{k: v for k, v in options.items() if k != "limit"})
            report_rows.report(con, spec, exact=exact, limit=limit)  # warm the file cache
            start = time.perf_counter()
            groups, _ = report_rows.report(con, spec, total_latency=False, exact=exact, limit=limit)
            middle = time.perf_counter()
            report_rows.report(con, spec, exact=exact, limit=limit)
            label = "--by " + " --by ".join(dims) + "".join(f" --{k} {v}" for k, v in options.items())
            results.append((label, middle - start, time.perf_counter() - middle, len(groups)))
    return results


def storage_mb(db: Path) -> dict[str, float]:
    """MB of the blocks each row table takes in the file (DuckDB's blocks of 256 KiB)."""
    with reading(db) as con:
        return {table: one(con.execute(f"SELECT count(DISTINCT block_id) * 262144 / 1e6 "
                                       f"FROM pragma_storage_info('{table}') WHERE persistent"))[0]
                for table in ("calls", *(tier.table for tier in rollups.TIERS))}


def time_export(db: Path, since: str | None) -> tuple[int, float, int]:
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        result = subprocess.run([sys.executable, "-c", _EXPORT_CHILD, str(db), out.name, since or ""],
                                capture_output=True, text=True, check=True)
    rows, elapsed, rss_kb = result.stdout.split("\n")[-2].split()  # the child's last line
    return int(rows), float(elapsed), int(rss_kb)


def data_end(db: Path) -> dt.datetime:
    """When the calls of an earlier run's store end."""
    with reading(db) as con:
        (end,) = one(con.execute("SELECT max(ts) FROM calls"))
    return end


@contextlib.contextmanager
def copied_into_lake(db: Path, tmp: Path) -> Iterator[dict[str, str]]:
    """The calls of ``db`` copied into a DuckLake on a throwaway PostgreSQL; yields the environment
    that points the shared mode at it (removed on exit)."""
    from addon.core.store import shared, transfer
    from tests.pg import Cluster
    cluster = Cluster()
    try:
        cfg = shared.SharedConfig(cluster.create_database("reports"), str(tmp / "lake"))
        start = time.perf_counter()
        con = shared.SharedConnection(cfg)
        try:
            transfer.copy_embedded(db, con)
        finally:
            con.close()
        print(f"copied into the lake in {time.perf_counter() - start:.1f} s")
        yield {shared.ENV_CATALOG: cfg.catalog, shared.ENV_DATA_PATH: str(tmp / "lake")}
    finally:
        cluster.remove()


def compare_shared(db: Path, tmp: Path, end: dt.datetime) -> None:
    """The same reports on the same rows, in the embedded file and in the lake."""
    import os

    from addon.core.store import shared
    with copied_into_lake(db, tmp) as env:
        embedded = time_reports(db, end)
        os.environ.update(env)
        try:
            in_lake = time_reports(db, end)
            waits = beside_a_long_read(db, end)
        finally:
            for name in env:
                del os.environ[name]
            shared.drop()
    print("report (warm, seconds)                             embedded    lake   lake/embedded")
    for (label, seconds, _, groups), (_, lake_seconds, _, lake_groups) in zip(embedded, in_lake, strict=True):
        assert groups == lake_groups, label
        print(f"  {label:<50} {seconds:>6.3f}  {lake_seconds:>6.3f}  {lake_seconds / seconds:>8.2f}x")
    long_read, writer, short_read = waits
    print(f"while every customer's report runs on the lake ({long_read:.2f} s), asked 1 s in: a writer's turn "
          f"{writer * 1000:.0f} ms, then the last hour's total {short_read * 1000:.0f} ms")


def beside_a_long_read(db: Path, end: dt.datetime) -> tuple[float, float, float]:
    """Seconds of every customer's report of the whole range, and the waits of a flush's turn on the
    process's connection and of a short read asked while it runs."""
    import threading

    took: list[float] = []

    def long_read() -> None:
        start = time.perf_counter()
        with reading(db) as con:
            report_rows.report(con, parse_report(["customer"], now=end), total_latency=False)
        took.append(time.perf_counter() - start)

    thread = threading.Thread(target=long_read)
    thread.start()
    time.sleep(1)
    start = time.perf_counter()
    with writing(db, timeout=120) as con:
        con.execute("SELECT 1").fetchall()
    writer = time.perf_counter() - start
    start = time.perf_counter()
    with reading(db, timeout=120) as con:
        report_rows.total(con, parse_report([], since="1h", now=end))
    short_read = time.perf_counter() - start
    thread.join()
    return took[0], writer, short_read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90, help="the time the calls span, ending at %s" % END.date())
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--shared", action="store_true", help="also time the reports on the shared mode's lake")
    parser.add_argument("--exact", action="store_true", help="also time each report as a raw scan (report --exact)")
    parser.add_argument("--home", type=Path, help="keep the generated calls here, and use what an earlier run (or "
                                                   "bench.page --home) left there instead of generating them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aispendtrack-reports-") as tmp:
        db = home_dir.db_path(args.home or Path(tmp))
        if db.exists():
            end = data_end(db)
            print(f"the calls of {db} (generated before, ending {end:%Y-%m-%d %H:%M}), "
                  f"{db.stat().st_size / 1e6:,.0f} MB on disk")
        else:
            db.parent.mkdir(parents=True, exist_ok=True)
            end = END
            print(f"generating {args.rows:,} calls over {args.days} days, {args.customers:,} customers ... "
                  f"{build(db, args.rows, args.days, args.customers):.1f} s, "
                  f"{db.stat().st_size / 1e6:,.0f} MB on disk")
        if args.shared:
            compare_shared(db, Path(tmp), end)
            return
        ok = True
        sizes = storage_mb(db)
        print("storage: " + ", ".join(f"{table} {mb:,.0f} MB" for table, mb in sizes.items()))
        # Interleaved, so that the load other processes put on the machine weighs on each alike.
        exact = time_reports(db, end, exact=True) if args.exact else None
        rolled = time_reports(db, end)
        # The tiers before the narrow ones (issue 28's third step), and the 15-minute tier alone.
        daily = time_reports(db, end, tiers=rollups.BEFORE_NARROW) if args.exact else None
        fine = time_reports(db, end, tiers=(rollups.FINE,)) if args.exact else None
        print("\nreport (warm, seconds)                             groups  +total line  groups"
              + ("   before  15-min   exact  +total line" if exact else ""))
        for i, (label, seconds, with_total, groups) in enumerate(rolled):
            ok &= seconds <= 1.0
            raw = (f"  {daily[i][1]:>7.3f}  {fine[i][1]:>6.3f}  {exact[i][1]:>6.3f}  {exact[i][2]:>11.3f}"
                   if exact and daily and fine else "")
            print(f"  {label:<50} {seconds:>6.3f}  {with_total:>11.3f}  {groups:>6,}{raw}"
                  f"{'' if seconds <= 1.0 else '  OVER 1 s'}")
        print("\nexport to CSV                      rows      seconds   rows/s   peak RSS")
        small_since = (end - dt.timedelta(days=9)).date().isoformat()  # ~1/10 of the 90 days
        exports = [time_export(db, small_since), time_export(db, None)]
        for rows, seconds, rss_kb in exports:
            print(f"  {'':<28}{rows:>10,}  {seconds:>8.2f}  {rows / seconds:>8,.0f}  {rss_kb / 1024:>7,.0f} MB")
        (small_rows, _, small_rss), (all_rows, all_seconds, all_rss) = exports
        ok &= all_rows / all_seconds >= 500_000
        flat = all_rss <= small_rss * 1.5
        ok &= flat
        print(f"  memory for {all_rows:,} rows is {all_rss / small_rss:.2f}x that for {small_rows:,} "
              f"({'flat' if flat else 'GROWS'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
