"""What mitmproxy's own options and addons cost ``aispendtrack proxy`` per non-streamed call.

    .venv/bin/python -m bench.mitm_options                 # ~2 minutes
    .venv/bin/python -m bench.mitm_options --rounds 3      # a smoke run

Every variant is ``aispendtrack proxy`` itself (cli/proxy.py), started with its mitmproxy
addons (``MITMPROXY_ADDONS``) or options (``MITMPROXY_OPTIONS``) changed, against one loopback
upstream (bench/loopback.py). Each round measures every variant in turn (order reversed every
other round) with sequential plain JSON calls on one keep-alive connection; the figure is the
median over rounds of (variant's p50 - the default's p50) in the same round, since this machine's
speed drifts by tens of percent within minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import loopback
from .proxy_overhead import free_port, latency, make_key, percentile, start, wait_for_port

# name: (all of mitmdump's addons instead of the proxy's own set, mitmproxy options to change)
VARIANTS: dict[str, tuple[bool, dict]] = {
    "default": (False, {}),
    "all mitmdump addons": (True, {}),
    "validate_inbound_headers=false": (False, {"validate_inbound_headers": False}),
    "http2=false": (False, {"http2": False}),
    "websocket=false": (False, {"websocket": False}),
    "connection_strategy=eager": (False, {"connection_strategy": "eager"}),
    "termlog_verbosity=warn": (False, {"termlog_verbosity": "warn"}),
}
_RUNNER = ("import json, sys; from cli import proxy; all_addons, options = json.loads(sys.argv[1]); "
           "proxy.MITMPROXY_ADDONS = None if all_addons else proxy.MITMPROXY_ADDONS; "
           "proxy.MITMPROXY_OPTIONS.update(options); from cli.main import cli; "
           "cli(sys.argv[2:], prog_name='aispendtrack')")


def start_variant(upstream_port: int, all_addons: bool, options: dict):
    home = Path(tempfile.mkdtemp(prefix="aispendtrack-options-"))
    key = make_key(home)
    port = free_port()
    proc = start([sys.executable, "-c", _RUNNER, json.dumps([all_addons, options]), "--home", str(home), "proxy",
                  "--port", str(port), "--openai-upstream", f"http://127.0.0.1:{upstream_port}",
                  "--prices-url", "off"])
    wait_for_port(port, proc)
    return port, proc, key


def run(rounds: int, count: int) -> dict:
    up_port = free_port()
    upstream = start([sys.executable, "-c", f"import asyncio; from bench import loopback; "
                                            f"asyncio.run(loopback.serve_upstream({up_port}))"])
    wait_for_port(up_port, upstream)
    procs, targets = [upstream], {}
    try:
        for name, (all_addons, options) in VARIANTS.items():
            port, proc, key = start_variant(up_port, all_addons, options)
            procs.append(proc)
            targets[name] = loopback.request_bytes(port, False, {"x-aispendtrack-key": key}), port
        time.sleep(1.0)
        totals: dict[str, list[float]] = {name: [] for name in targets}
        round_p50: dict[str, list[float]] = {name: [] for name in targets}
        for n in range(rounds):
            for name, (raw, port) in (list(targets.items())[::-1] if n % 2 else targets.items()):
                asyncio.run(latency(port, raw, 20))  # warm-up
                samples, _ = asyncio.run(latency(port, raw, count))
                totals[name] += samples
                round_p50[name].append(percentile(samples, 50) * 1000)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    base = round_p50["default"]
    return {name: {"p50_ms": percentile(totals[name], 50) * 1000, "p99_ms": percentile(totals[name], 99) * 1000,
                   "vs_default_ms": statistics.median(a - b for a, b in zip(round_p50[name], base, strict=True)),
                   "rounds_faster": sum(a < b for a, b in zip(round_p50[name], base, strict=True)),
                   "round_p50_ms": round_p50[name]}
            for name in targets}


def report(results: dict, rounds: int, count: int) -> str:
    lines = [f"{rounds} interleaved rounds of {count} sequential plain JSON calls per variant",
             f"  {'variant':<32}{'p50 ms':>8}{'p99 ms':>8}{'vs default (median of rounds)':>31}{'rounds faster':>15}"]
    for name, r in results.items():
        lines.append(f"  {name:<32}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['vs_default_ms']:>+29.3f} ms"
                     f"{r['rounds_faster']:>10} of {rounds}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--count", type=int, default=200, help="calls per variant per round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run(args.rounds, args.count)
    print(report(results, args.rounds, args.count))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
