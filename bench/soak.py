"""Soak: many calls through the real proxy at high concurrency; errors, rows and memory over time.

    .venv/bin/python -m bench.soak                        # 100,000 calls at concurrency 32 (~4-6 min here)
    .venv/bin/python -m bench.soak --calls 5000           # a smoke run
    .venv/bin/python -m bench.soak --bare                 # bare mitmdump first, same load, for the ratio

Everything on 127.0.0.1: ``aispendtrack proxy`` (the product as users run it) in front of the
canned upstream from bench/loopback.py. The calls rotate through OpenAI and Anthropic, plain and
streamed. Every answer is checked byte for byte against what the upstream sent; afterwards the
proxy is stopped and the rows in its database are counted. The proxy's RSS (summed over its
processes: with workers, the parent, the data's owner and each worker) is sampled every second;
"flat" means the growth after warm-up (the first 20% of calls) stays small and does not keep
climbing with the number of calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from addon.core import home as home_dir
from addon.core.store import reading
from addon.core.store.connection import one

from . import loopback
from .processes import rss_kib
from .proxy_overhead import ROOT, free_port, make_key, mitmdump, start, wait_for_port

KINDS = [("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True)]


def rss_mib(pid: int) -> float:
    return rss_kib(pid) / 1024


def expected_body(provider: str, stream: bool) -> bytes:
    if provider == "openai":
        return b"".join(loopback.SSE_EVENTS) if stream else loopback.CHAT_BODY
    return b"".join(loopback.ANTHROPIC_EVENTS) if stream else loopback.MESSAGE_BODY


async def drive(port: int, key: str, calls: int, concurrency: int, progress: list[int]) -> dict[str, int]:
    requests = {kind: loopback.request_bytes(port, kind[1], {"x-aispendtrack-key": key},
                                             anthropic=kind[0] == "anthropic") for kind in KINDS}
    expected = {kind: expected_body(*kind) for kind in KINDS}
    errors: dict[str, int] = {}
    next_call = 0

    async def worker() -> None:
        nonlocal next_call
        conn = await loopback.Connection.open(port)
        while next_call < calls:
            kind = KINDS[next_call % len(KINDS)]
            next_call += 1
            try:
                status, _, body = await conn.request(requests[kind], time.perf_counter)
                problem = None if status == 200 and body == expected[kind] else f"{kind}: status {status} or body"
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                problem = f"{kind}: {type(exc).__name__}"
                conn.close()
                conn = await loopback.Connection.open(port)
            if problem:
                errors[problem] = errors.get(problem, 0) + 1
            progress[0] += 1
        conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


def sample_memory(pid: int, progress: list[int], samples: list[tuple[float, int, float]], stop: threading.Event):
    started = time.monotonic()
    while not stop.wait(1.0):
        samples.append((time.monotonic() - started, progress[0], rss_mib(pid)))


def run(calls: int, concurrency: int, bare: bool = False) -> dict:
    """Through ``aispendtrack proxy``, or with ``bare`` through mitmdump without the addon
    (streaming bodies, as the addon does), to compare throughput and memory in the same run."""
    home = Path(tempfile.mkdtemp(prefix="aispendtrack-soak-"))
    key = make_key(home)
    up_port, port = free_port(), free_port()
    upstream = start([sys.executable, "-c", f"import asyncio; from bench import loopback; "
                                            f"asyncio.run(loopback.serve_upstream({up_port}))"])
    url = f"http://127.0.0.1:{up_port}"
    if bare:
        proxy = mitmdump(up_port, port, ["--set", "stream_large_bodies=1"])
    else:
        proxy = start([sys.executable, "-m", "cli", "--home", str(home), "proxy", "--port", str(port),
                       "--openai-upstream", url, "--anthropic-upstream", url])
    progress, stop = [0], threading.Event()
    samples: list[tuple[float, int, float]] = []
    try:
        wait_for_port(up_port, upstream)
        wait_for_port(port, proxy)
        time.sleep(1.0)
        sampler = threading.Thread(target=sample_memory, args=(proxy.pid, progress, samples, stop), daemon=True)
        sampler.start()
        started = time.monotonic()
        errors = asyncio.run(drive(port, key, calls, concurrency, progress))
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join()
    finally:
        proxy.terminate()
        proxy.wait(60)
        upstream.terminate()
        upstream.wait(10)
    rows = reported = 0
    if not bare:
        with reading(home_dir.db_path(home)) as con:
            rows, reported = one(con.execute(
                "SELECT count(*), count(*) FILTER (WHERE usage_source = 'reported' AND priced) FROM calls"))
    return {"calls": calls, "concurrency": concurrency, "seconds": elapsed, "calls_per_s": calls / elapsed,
            "errors": errors, "rows": rows, "rows_reported_and_priced": reported, "memory": memory(samples, calls),
            "proxy_exit_code": proxy.returncode}


def memory(samples: list[tuple[float, int, float]], calls: int) -> dict:
    """RSS after warm-up (20% of calls), at the end, and its growth over the last 80%."""
    warm = [s for s in samples if s[1] >= calls * 0.2] or samples[-1:]
    start_rss, end_rss, peak = warm[0][2], warm[-1][2], max(s[2] for s in samples)
    halfway = [s for s in warm if s[1] >= calls * 0.6] or warm[-1:]
    return {"after_warmup_mib": start_rss, "end_mib": end_rss, "peak_mib": peak,
            "growth_mib": end_rss - start_rss,
            "growth_first_half_mib": halfway[0][2] - start_rss, "growth_second_half_mib": end_rss - halfway[0][2],
            "samples": [(round(t, 1), n, round(r, 1)) for t, n, r in samples]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bare", action="store_true",
                        help="First run the same load through bare mitmdump, and report ours against it.")
    args = parser.parse_args()
    base = run(args.calls, args.concurrency, bare=True) if args.bare else None
    result = run(args.calls, args.concurrency)
    result["bare_mitmdump"] = base
    out = ROOT / "bench" / "results" / "soak.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if base:
        print(f"bare mitmdump: {base['calls_per_s']:.0f} calls/s, errors {sum(base['errors'].values())}, RSS "
              f"{base['memory']['after_warmup_mib']:.0f} -> {base['memory']['end_mib']:.0f} MiB; ours: "
              f"{result['calls_per_s'] / base['calls_per_s']:.0%} of its throughput")
    m = result["memory"]
    print(f"{result['calls']:,} calls at concurrency {result['concurrency']} in {result['seconds']:.0f} s "
          f"({result['calls_per_s']:.0f}/s); errors: {sum(result['errors'].values())} {result['errors'] or ''}")
    print(f"rows stored: {result['rows']:,} ({result['rows_reported_and_priced']:,} with reported usage and a price)")
    print(f"proxy RSS: {m['after_warmup_mib']:.0f} MiB after warm-up, {m['end_mib']:.0f} MiB at the end "
          f"(peak {m['peak_mib']:.0f}); growth {m['growth_first_half_mib']:+.1f} MiB over the first half "
          f"of the rest, {m['growth_second_half_mib']:+.1f} MiB over the second")
    print(f"details: {out}")
    ok = not result["errors"] and result["rows"] == result["calls"] and result["proxy_exit_code"] == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
