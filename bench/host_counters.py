"""The limit check on the request path of the embedded mode's workers, measured.

    .venv/bin/python -m bench.host_counters

One process's in-memory ``Limiter.admit`` (the baseline: `--workers 1`) against the same check in
the host's shared counts (addon/core/host_counters.py: flock, read the slot, write it, unlock), alone
and with a second process hammering the same key's slot (the lock contended). Interleaved rounds,
medians of per-call microseconds. Figures: docs/architecture.md ("Workers of the embedded mode").
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from addon.core import host_counters, periods
from addon.core.limits import Limiter
from addon.core.plans import Limits

CALLS = 20_000


def _limiter(shared: Path | None) -> Limiter:
    limiter = Limiter(periods.UTC)
    limiter.set_limits({1: Limits(per_hour=10**9, per_month=10**9)})
    if shared is not None:
        limiter.host = host_counters.HostCounters(shared)
    return limiter


def _per_call_us(limiter: Limiter) -> float:
    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    for _ in range(CALLS):
        limiter.admit(1, now)
    return (time.perf_counter() - started) / CALLS * 1e6


def _hammer(path: str, stop) -> None:
    limiter = _limiter(Path(path))
    now = dt.datetime.now(dt.UTC)
    while not stop.is_set():
        limiter.admit(1, now)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "counters"
        now = dt.datetime.now(dt.UTC)
        host_counters.create(path, {}, periods.hour_start(now), periods.month_start(now, periods.UTC))
        local, shared = _limiter(None), _limiter(path)
        figures: dict[str, list[float]] = {"in memory (one process)": [], "host counts, alone": [],
                                           "host counts, contended": []}
        for _ in range(rounds):
            figures["in memory (one process)"].append(_per_call_us(local))
            figures["host counts, alone"].append(_per_call_us(shared))
            stop = multiprocessing.Event()
            other = multiprocessing.Process(target=_hammer, args=(str(path), stop))
            other.start()
            time.sleep(0.2)
            figures["host counts, contended"].append(_per_call_us(shared))
            stop.set()
            other.join()
    base = statistics.median(figures["in memory (one process)"])
    print(f"limit check per call, microseconds ({rounds} interleaved rounds of {CALLS}, medians)")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"  {name:26} {median:6.2f} us  x{median / base:5.1f}")


if __name__ == "__main__":
    main()
