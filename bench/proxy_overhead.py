"""Added latency and throughput of the AiSpendTrack addon, against bare mitmdump and direct calls.

    .venv/bin/python -m bench.proxy_overhead            # about 4 minutes on 2 cores
    .venv/bin/python -m bench.proxy_overhead --quick    # a smoke run
    git worktree add /tmp/prev REV && .venv/bin/python -m bench.proxy_overhead --previous /tmp/prev
                                                        # also an earlier commit, in the same run

Everything runs on 127.0.0.1: a canned asyncio upstream (plain JSON and a 22-event SSE
stream), ``mitmdump`` in reverse mode with no script ("bare"), the same with
``-s addon/aispendtrack.py`` ("ours"), and a keep-alive client in this process. Streams go
through ours twice: asking for usage ("ours"), and not asking ("ours injected": the proxy adds
``include_usage`` upstream and strips the usage chunk again, as for LangChain or LiteLLM). Targets
are measured in interleaved rounds so that drift of the machine hits them alike.
The forward mode is measured the same way in the same rounds: ours with ``--mode regular@PORT``
beside its reverse mode ("ours forward", 127.0.0.1 counted as OpenAI's host by
``aispendtrack_forward_hosts``, the key as the proxy credential) against bare mitmdump in regular
mode ("bare regular"), both sent plain-HTTP proxy requests (absolute-form), so neither pays for TLS.
At the end ours is stopped and its rows are counted: exactly one per request is required.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import loopback

ROOT = Path(__file__).resolve().parent.parent
# Bare mitmdump two ways: as installed (buffers every response, which holds SSE back until the
# end), and told to stream bodies, which delivers SSE as it arrives like the addon does. Each
# mode is judged against the one with the same delivery: plain against buffered, SSE against
# streaming.
BARE = {"bare mitmdump": [], "bare streaming": ["--set", "stream_large_bodies=1"]}
BASELINE = {"plain": "bare mitmdump", "stream": "bare streaming"}
# Ours as measured, per mode: (target name, whether the client asks for stream usage itself).
OURS = {"plain": (("ours", True),), "stream": (("ours", True), ("ours injected", False))}
# The forward mode: bare mitmdump's regular mode, buffering and streaming, and ours beside it.
BARE_REGULAR = {"bare regular": [], "bare regular streaming": ["--set", "stream_large_bodies=1"]}
REGULAR_BASELINE = {"plain": "bare regular", "stream": "bare regular streaming"}
FORWARD = "ours forward"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early: {process.args!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start(args: list[str], root: Path = ROOT) -> subprocess.Popen:
    """In ``root``'s checkout: its code is what the process imports."""
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root, env=_env(root))


def _env(root: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(root)}


def mitmdump(upstream_port: int, port: int, extra: list[str], root: Path = ROOT) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("mitmdump")
    return start([str(exe), "-q", "--mode", f"reverse:http://127.0.0.1:{upstream_port}", "--listen-host",
                  "127.0.0.1", "--listen-port", str(port), "--set", "connection_strategy=lazy", *extra], root)


def mitmdump_regular(port: int, extra: list[str]) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("mitmdump")
    return start([str(exe), "-q", "--mode", f"regular@{port}", "--listen-host", "127.0.0.1",
                  "--set", "connection_strategy=lazy", *extra])


def start_ours(upstream_port: int, root: Path,
               forward_port: int | None = None) -> tuple[int, subprocess.Popen, Path, str]:
    """The addon of the checkout at ``root`` with a data directory and key of its own; with
    ``forward_port``, its forward mode there too (the upstream's address counted as OpenAI's host)."""
    home = Path(tempfile.mkdtemp(prefix="aispendtrack-bench-"))
    key = make_key(home, root)
    port = free_port()
    forward = ["--mode", f"regular@{forward_port}", "--set", "aispendtrack_forward_hosts=openai=127.0.0.1",
               "--set", f"confdir={home / 'ca'}"] if forward_port else []
    proc = mitmdump(upstream_port, port, ["-s", str(root / "addon" / "aispendtrack.py"),
                                          "--set", f"aispendtrack_home={home}", *forward], root)
    return port, proc, home, key


async def latency(port: int, raw: bytes, count: int) -> tuple[list[float], list[float]]:
    """Sequential requests on one connection: (total seconds, seconds to first body byte) per request."""
    conn = await loopback.Connection.open(port)
    totals, firsts = [], []
    try:
        for _ in range(count):
            start = time.perf_counter()
            status, first, _ = await conn.request(raw, time.perf_counter)
            totals.append(time.perf_counter() - start)
            firsts.append(first)
            assert status == 200, status
    finally:
        conn.close()
    return totals, firsts


async def throughput(port: int, raw: bytes, connections: int, total: int) -> float:
    conns = [await loopback.Connection.open(port) for _ in range(connections)]
    remaining = total

    async def worker(conn: loopback.Connection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status, _, _ = await conn.request(raw, time.perf_counter)
            assert status == 200, status

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    return total / elapsed


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def make_key(home: Path, root: Path = ROOT) -> str:
    out = subprocess.run([sys.executable, "-m", "cli", "--home", str(home), "keys", "create", "--name", "bench",
                          "--json"], capture_output=True, text=True, check=True, cwd=root, env=_env(root))
    return json.loads(out.stdout)["key"]


def recorded_rows(home: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "cli", "--home", str(home), "calls", "--limit", "1000000",
                          "--format", "json"], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def own_figures(rows: list[dict]) -> dict:
    """What ours says it added (the rows' proxy_us), per mode: p50 and p99 in ms, as the page shows them."""
    out = {}
    for mode, stream in (("plain", False), ("stream", True)):
        values = [r["proxy_us"] / 1000 for r in rows if r["stream"] == stream and r["proxy_us"] is not None]
        if values:
            out[mode] = {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99), "calls": len(values)}
    return out


def run(rounds: int, latency_count: int, load_count: int, connections: int, previous: Path | None = None) -> dict:
    up_port = free_port()
    upstream = start([sys.executable, "-c", f"import asyncio; from bench import loopback; "
                                            f"asyncio.run(loopback.serve_upstream({up_port}))"])
    targets = {"direct": (up_port, upstream)}
    for name, extra in BARE.items():
        port = free_port()
        targets[name] = (port, mitmdump(up_port, port, extra))
    regular = {}
    for name, extra in BARE_REGULAR.items():
        port = free_port()
        regular[name] = (port, mitmdump_regular(port, extra))
    forward_port = free_port()
    ours_port, ours, home, key = start_ours(up_port, ROOT, forward_port)
    procs = [proc for _, proc in [*targets.values(), *regular.values()]] + [ours]
    before = start_ours(up_port, previous) if previous else None
    if before is not None:
        procs.append(before[1])
    sent_through_ours = 0
    results: dict = {}
    try:
        for port, proc in [*targets.values(), *regular.values(), (ours_port, ours), (forward_port, ours),
                           *([before[:2]] if before else [])]:
            wait_for_port(port, proc)
        time.sleep(1.0)  # let the addon load its keys
        credential = "Basic " + base64.b64encode(f"aispendtrack:{key}".encode()).decode()
        for mode in ("plain", "stream"):
            # (name, port the client connects to, extra headers, whether the client asks for stream
            # usage, whether it talks to a forward proxy)
            runs: list[tuple[str, int, dict[str, str], bool, bool]] = [
                (name, port, {}, True, False) for name, (port, _) in targets.items()]
            runs += [(name, ours_port, {"x-aispendtrack-key": key}, asks, False) for name, asks in OURS[mode]]
            runs += [(name, port, {}, True, True) for name, (port, _) in regular.items()]
            runs.append((FORWARD, forward_port, {"proxy-authorization": credential}, True, True))
            if before is not None:
                runs.append(("previous", before[0], {"x-aispendtrack-key": before[3]}, True, False))
            samples: dict[str, dict[str, list[float]]] = {
                name: {"total": [], "first": [], "rps": [], "round_p50": []} for name, *_ in runs}
            for n in range(rounds):
                # Alternate the order each round, and compare targets within a round: this machine's
                # speed drifts by tens of percent over minutes, which pooled figures would pick up.
                for name, port, headers, asks, via_proxy in (runs[::-1] if n % 2 else runs):
                    raw = loopback.request_bytes(up_port if via_proxy else port, mode == "stream", headers,
                                                 ask_usage=asks, via_proxy=via_proxy)
                    asyncio.run(latency(port, raw, 20))  # warm-up
                    totals, firsts = asyncio.run(latency(port, raw, latency_count))
                    rps = asyncio.run(throughput(port, raw, connections, load_count))
                    samples[name]["total"] += totals
                    samples[name]["first"] += firsts
                    samples[name]["round_p50"].append(percentile(totals, 50))
                    samples[name]["rps"].append(rps)
                    if port in (ours_port, forward_port):
                        sent_through_ours += 20 + latency_count + load_count
            results[mode] = summarise(samples)
    finally:
        ours.terminate()
        ours.wait(30)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    rows = recorded_rows(home)
    results["rows"] = {"sent_through_ours": sent_through_ours, "recorded": len(rows)}
    results["own"] = own_figures(rows)
    results["settings"] = {"rounds": rounds, "latency_requests": latency_count, "load_requests": load_count,
                           "connections": connections, "cpus": os.cpu_count()}
    return results


def summarise(samples: dict) -> dict:
    out = {}
    direct_p50 = percentile(samples["direct"]["total"], 50)
    for name, s in samples.items():
        out[name] = {
            "p50_ms": percentile(s["total"], 50) * 1000, "p99_ms": percentile(s["total"], 99) * 1000,
            "first_byte_p50_ms": percentile(s["first"], 50) * 1000,
            "added_p50_ms": (percentile(s["total"], 50) - direct_p50) * 1000,
            "rps": statistics.median(s["rps"]),
            "round_p50_ms": [v * 1000 for v in s["round_p50"]], "round_rps": s["rps"],
        }
    return out


def paired(r: dict, name: str, base: str) -> tuple[float, float]:
    """Median over rounds of (target - base) p50 in ms, and of target/base throughput."""
    ours = r[name]
    delta = statistics.median(a - b for a, b in zip(ours["round_p50_ms"], r[base]["round_p50_ms"], strict=True))
    ratio = statistics.median(a / b for a, b in zip(ours["round_rps"], r[base]["round_rps"], strict=True))
    return delta, ratio


def report(results: dict) -> bool:
    ok = True
    for mode in ("plain", "stream"):
        r = results[mode]
        print(f"\n{mode} requests ({'22-event SSE' if mode == 'stream' else 'JSON'}):")
        print(f"  {'target':<24}{'p50 ms':>9}{'p99 ms':>9}{'1st byte':>10}{'added p50':>11}{'req/s':>9}")
        for name, v in r.items():
            print(f"  {name:<24}{v['p50_ms']:>9.2f}{v['p99_ms']:>9.2f}{v['first_byte_p50_ms']:>10.2f}"
                  f"{v['added_p50_ms']:>11.2f}{v['rps']:>9.0f}")
        base = BASELINE[mode]
        if "previous" in r:
            delta, ratio = paired(r, "ours", "previous")
            print(f"  ours vs previous (the --previous checkout), median of per-round differences: "
                  f"p50 {delta:+.2f} ms; throughput {ratio:.0%}")
        for name, against in [*((name, base) for name, _ in OURS[mode]), (FORWARD, REGULAR_BASELINE[mode])]:
            delta, ratio = paired(r, name, against)
            lat_ok, rps_ok = delta <= 0.5, ratio >= 0.85
            ok &= lat_ok and rps_ok
            print(f"  {name} vs {against}, median of per-round differences: p50 {delta:+.2f} ms (target <= +0.50) "
                  f"{'ok' if lat_ok else 'MISSED'}; throughput {ratio:.0%} (target >= 85%) "
                  f"{'ok' if rps_ok else 'MISSED'}")
        own = results.get("own", {}).get(mode)
        if own:  # the same calls, as ours measured itself: its hooks only, without mitmproxy's dispatch of them
            print(f"  ours' own figure for its {own['calls']} {mode} calls (rows' proxy_us, the page's): "
                  f"p50 {own['p50_ms']:.3f} ms, p99 {own['p99_ms']:.3f} ms")
    rows = results["rows"]
    rows_ok = rows["recorded"] == rows["sent_through_ours"]
    print(f"\nrows recorded by ours: {rows['recorded']} of {rows['sent_through_ours']} requests "
          f"{'(exactly one each)' if rows_ok else '(MISMATCH)'}")
    return ok and rows_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--previous", type=Path, metavar="DIR",
                        help="also measure the addon of this checkout (an earlier commit), in the same rounds")
    args = parser.parse_args()
    counts = (2, 100, 300, 32) if args.quick else (10, 150, 600, 32)
    results = run(*counts, previous=args.previous.resolve() if args.previous else None)
    ok = report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
