"""The API's total over ranges that cut a day (`since=30d` at three times of day), on the lake,
with DuckDB's Parquet footer cache off and on, interleaved in one process (issue 28):

    .venv/bin/python -m bench.cut_totals --home DIR    # the calls bench.reports --home DIR generated

A range that cuts a day reads its edge hours and quarters from two more tiers' files than a
day-aligned one; the footer cache (store/shared.py) spares each scan the parse of its file's footer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path

from addon.core import home as home_dir
from addon.core.reports import parse_report
from addon.core.store import reading, shared
from addon.core.store import reports as report_rows

from .reports import copied_into_lake, data_end

ROUNDS = 6
TIMES_OF_DAY = ((9, 7), (13, 47), (21, 52))


def _timed(con, cached: bool, since: str, nows: list[dt.datetime]) -> list[float]:
    con.execute(f"SET parquet_metadata_cache = {str(cached).lower()}")
    out = []
    for now in nows:
        spec = parse_report((), now=now, since=since)
        report_rows.total(con, spec)  # warm
        start = time.perf_counter()
        report_rows.total(con, spec)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="where bench.reports --home left its calls")
    args = parser.parse_args()
    db = home_dir.db_path(args.home)
    day_after = data_end(db).replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    nows = [day_after + dt.timedelta(hours=h, minutes=m) for h, m in TIMES_OF_DAY]
    found: dict[tuple[bool, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="aispendtrack-cut-") as tmp, copied_into_lake(db, Path(tmp)) as env:
        os.environ.update(env)
        try:
            for _ in range(ROUNDS):
                with reading(db) as con:
                    for cached in (False, True):
                        for since in ("30d", "7d"):
                            found.setdefault((cached, since), []).extend(_timed(con, cached, since, nows))
        finally:
            shared.drop()
    print("total on the lake, ms              median    min")
    for (cached, since), seconds in found.items():
        label = f"since={since}, footer cache {'on' if cached else 'off'}"
        print(f"  {label:<32} {statistics.median(seconds) * 1000:>6.1f} {min(seconds) * 1000:>6.1f}")


if __name__ == "__main__":
    main()
