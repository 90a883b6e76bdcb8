"""What every customer's p50/p95 over a year would cost from a per-customer histogram (issue 28).

    .venv/bin/python -m bench.customer_quantiles                 # ~1 minute, ~3 GB of memory
    .venv/bin/python -m bench.customer_quantiles --customers 10000

Not a report of the product: the product has no per-customer tier over a whole range (its weekly
customers' tier holds ~81M histogram entries at 100M calls, whose per-customer merge alone takes
8 s). This builds what such a tier would hold, the year's latency histogram of each customer
merged, with the spread of bench.reports' 100M store (100,000 customers, 20-410 bins each: ~21.5M
entries), and times three ways to take the quantiles from it:

1. SQL: a running sum per customer (a window) and the first bin past each point;
2. SQL over running sums stored with each entry (what a tier kept for this would hold): a plain
   filtered aggregate;
3. numpy over the entries fetched from DuckDB, where numpy is installed (not a dependency).
"""

from __future__ import annotations

import argparse
import time

import duckdb

_ENTRIES = """
CREATE TABLE h AS
SELECT c::INTEGER AS customer_key, (b + c % 97)::SMALLINT AS bin, (1 + hash(c, b) % 50)::BIGINT AS n
FROM range(?) t(c), LATERAL (SELECT range AS b FROM range(20 + (hash(c) % 390)::INT))
ORDER BY customer_key, bin"""
_WINDOW = """
SELECT customer_key, min(bin) FILTER (WHERE cum >= 0.5 * tot), min(bin) FILTER (WHERE cum >= 0.95 * tot) FROM (
    SELECT customer_key, bin, sum(n) OVER (PARTITION BY customer_key ORDER BY bin) AS cum,
           sum(n) OVER (PARTITION BY customer_key) AS tot FROM h)
GROUP BY customer_key"""
_STORED = ("CREATE TABLE hc AS SELECT customer_key, bin, sum(n) OVER (PARTITION BY customer_key ORDER BY bin) "
           "AS cum, sum(n) OVER (PARTITION BY customer_key) AS tot FROM h ORDER BY customer_key, bin")
_FROM_STORED = ("SELECT customer_key, min(bin) FILTER (WHERE cum >= 0.5 * tot), "
                "min(bin) FILTER (WHERE cum >= 0.95 * tot) FROM hc GROUP BY customer_key")


def timed(work) -> tuple[float, object]:
    start = time.perf_counter()
    found = work()
    return time.perf_counter() - start, found


def with_numpy(con: duckdb.DuckDBPyConnection) -> dict[int, tuple[int, int]]:
    import numpy as np

    arrays = con.execute("SELECT customer_key, bin, n FROM h ORDER BY customer_key, bin").fetchnumpy()
    keys, bins, counts = arrays["customer_key"], arrays["bin"], arrays["n"]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)] - 1
    running = np.cumsum(counts)
    before = np.r_[0, running[:-1]][starts]
    total = running[ends] - before
    points = [bins[np.searchsorted(running, before + q * total)] for q in (0.5, 0.95)]
    return dict(zip(keys[starts].tolist(), zip(points[0].tolist(), points[1].tolist())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    built, _ = timed(lambda: con.execute(_ENTRIES, [args.customers]))
    (entries,) = con.execute("SELECT count(*) FROM h").fetchone()  # type: ignore[misc]
    print(f"{args.customers:,} customers, {entries:,} histogram entries (built in {built:.1f} s)")
    seconds, window = timed(lambda: dict((k, (a, b)) for k, a, b in con.execute(_WINDOW).fetchall()))
    print(f"SQL, a running sum per customer:       {seconds:.2f} s")
    stored, _ = timed(lambda: con.execute(_STORED))
    for _ in range(2):
        seconds, found = timed(lambda: dict((k, (a, b)) for k, a, b in con.execute(_FROM_STORED).fetchall()))
        print(f"SQL over stored running sums:          {seconds:.2f} s (storing them: {stored:.1f} s)")
    assert found == window, "the stored running sums give other bins"
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("numpy: not installed (not a dependency; install it in a scratch environment to time it)")
        return
    for _ in range(2):
        seconds, found = timed(lambda: with_numpy(con))
        print(f"numpy over the fetched entries:        {seconds:.2f} s")
    assert found == window, "numpy gives other bins"


if __name__ == "__main__":
    main()
