"""Many concurrent LLM-like streams through bare mitmdump and through ``aispendtrack proxy``.

    .venv/bin/python -m bench.streams                      # 2,000 streams of 10 s, ~3 minutes
    .venv/bin/python -m bench.streams --streams 300 --seconds 3 --rounds 1   # a smoke run

Everything runs on 127.0.0.1. A loopback upstream (one asyncio process, a task per stream, no
thread) answers every chat completion with an SSE stream in OpenAI's wire format: an event every
``--interval-ms`` for ``--seconds``, each carrying the monotonic time the upstream wrote it, then
the usage chunk and ``[DONE]``. The client (asyncio protocols on raw sockets, in this process)
opens ``--streams`` connections in a ramp and reads every event as it arrives; the delay of an
event is its arrival time minus its send time (CLOCK_MONOTONIC is one clock for all processes).

Targets, in interleaved rounds: "direct" (the upstream itself: what the harness adds), bare
mitmdump in reverse mode streaming bodies (``stream_large_bodies=1``: its default holds an SSE
response back until it ends), and ``aispendtrack proxy`` with its default settings (only the
upstream given, and price fetching off: no internet here; a worker per core). Per target: outcomes
(complete, 503, reset, closed early, timed out), added delay per event at p50/p99 over direct, and
the proxy's memory per open stream: (peak RSS during the wave - RSS before it) / streams, and its
CPU, each summed over the proxy's processes (with workers: the parent, the owner, each worker).

Last, the cap: ours with ``--max-connections 500 --workers 1`` and 700 shorter streams: 500 must
complete and 200 get a 503 with ``retry-after``, none reset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .processes import cpu_s, rss_kib
from .proxy_overhead import ROOT, free_port, make_key, mitmdump, percentile, start, wait_for_port

_STAMP = re.compile(rb"t=(\d+\.\d+)")
_BASE = {"id": "chatcmpl-streams", "object": "chat.completion.chunk", "created": 1727346169,
         "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_bench"}


def run_loop(main):
    """The harness's own loop: uvloop where installed (``pip install uvloop``), so that the client and
    the upstream take less of the cores the proxies need; the proxies run on mitmproxy's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _event(payload: dict) -> bytes:
    data = b"data: " + json.dumps(payload).encode() + b"\n\n"
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def serve_streams(port: int) -> None:
    """The upstream: ``x-bench-stream: EVENTS,INTERVAL_MS`` on the request sets the stream's shape."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    usage = _event({**_BASE, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 40,
                                                      "total_tokens": 49}})
    done = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"(?i)content-length: *(\d+)", request)
            assert found, request  # the bench's clients send a Content-Length
            length = int(found[1])
            await reader.readexactly(length)
            shape = re.search(rb"(?i)x-bench-stream: *(\d+),(\d+)", request)
            events, interval = (int(shape[1]), int(shape[2]) / 1000) if shape else (40, 0.25)
            writer.write(head)
            start = time.monotonic()
            for n in range(events):
                await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
                writer.write(_event({**_BASE, "choices": [{"index": 0, "delta": {
                    "content": f"t={time.monotonic():.6f} "}, "finish_reason": None}]}))
            await asyncio.sleep(max(0.0, start + events * interval - time.monotonic()))
            writer.write(usage + done)
            await writer.drain()
            await reader.read()  # the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


class _Stream(asyncio.Protocol):
    """One streamed call read as cheaply as Python allows: de-chunk, split events, read the stamps."""

    def __init__(self, request: bytes, delays: list[float], finished: asyncio.Future):
        self.request, self.delays, self.finished = request, delays, finished
        self.buf = b""
        self.head: bytes | None = None
        self.body = b""  # de-chunked bytes not yet split into events
        self.events = 0
        self.ended = False  # the last chunk arrived
        self.done = False  # data: [DONE] arrived
        self.outcome = ""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buf += data
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head, self.buf = self.buf[:end + 4], self.buf[end + 4:]
            if not self.head.startswith(b"HTTP/1.1 200"):
                return  # read the rest of a refusal until the close
        if not self.head.startswith(b"HTTP/1.1 200"):
            return
        self._dechunk()
        *complete, self.body = self.body.split(b"\n\n")
        for event in complete:
            self.done = self.done or event == b"data: [DONE]"
            stamp = _STAMP.search(event)
            if stamp:
                self.events += 1
                self.delays.append(now - float(stamp[1]))
        if self.ended:
            self.outcome = "complete" if self.done else "ended without [DONE]"
            self.transport.close()

    def _dechunk(self) -> None:
        while True:
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self.buf[:line_end].split(b";")[0], 16)
            if len(self.buf) < line_end + 2 + size + 2:
                return
            self.body += self.buf[line_end + 2:line_end + 2 + size]
            self.buf = self.buf[line_end + 4 + size:]
            if size == 0:
                self.ended = True
                return

    def connection_lost(self, exc) -> None:
        if self.outcome:
            pass
        elif isinstance(exc, ConnectionResetError):
            self.outcome = "reset"
        elif self.head is not None and not self.head.startswith(b"HTTP/1.1 200"):
            status = self.head.split(b" ", 2)[1].decode()
            retry = b"\r\nretry-after:" in self.head.lower()
            self.outcome = f"{status}{' with retry-after' if retry else ''}"
        else:
            self.outcome = f"closed early ({type(exc).__name__ if exc else 'EOF'}"\
                           f"{', after the head' if self.head else ''})"
        if not self.finished.done():
            self.finished.set_result(self.outcome)


@dataclass
class Wave:
    outcomes: dict[str, int] = field(default_factory=dict)
    delays: list[float] = field(default_factory=list)
    rss_idle_kib: int = 0
    rss_peak_kib: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0  # the proxy's CPU time (user + system) over the wave


def request_bytes(port: int, key: str | None, events: int, interval_ms: int) -> bytes:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    lines = ["POST /v1/chat/completions HTTP/1.1", f"host: 127.0.0.1:{port}", "content-type: application/json",
             "authorization: Bearer sk-bench", f"content-length: {len(body)}",
             f"x-bench-stream: {events},{interval_ms}", "connection: close"]
    if key:
        lines.append(f"x-aispendtrack-key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def wave(port: int, key: str | None, pid: int | None, streams: int, events: int, interval_ms: int,
               ramp_s: float) -> Wave:
    loop = asyncio.get_running_loop()
    request = request_bytes(port, key, events, interval_ms)
    result = Wave()
    result.rss_idle_kib = result.rss_peak_kib = rss_kib(pid) if pid else 0
    sampling = True

    async def sample() -> None:
        while sampling and pid:
            result.rss_peak_kib = max(result.rss_peak_kib, rss_kib(pid))
            await asyncio.sleep(0.2)

    async def one(n: int) -> str:
        await asyncio.sleep(n * ramp_s / streams)
        finished = loop.create_future()
        try:
            transport, _ = await loop.create_connection(lambda: _Stream(request, result.delays, finished),
                                                        "127.0.0.1", port)
        except OSError as exc:
            return f"connect failed ({type(exc).__name__})"
        try:
            return await asyncio.wait_for(finished, events * interval_ms / 1000 + 60)
        except TimeoutError:
            transport.abort()
            return "timed out"

    sampler = asyncio.create_task(sample())
    start, cpu_start = time.monotonic(), cpu_s(pid) if pid else 0.0
    outcomes = await asyncio.gather(*(one(n) for n in range(streams)))
    result.seconds = time.monotonic() - start
    result.cpu_s = cpu_s(pid) - cpu_start if pid else 0.0
    sampling = False
    await sampler
    for outcome in outcomes:
        result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1
    return result


def start_ours(upstream_port: int, extra: tuple[str, ...] = ()) -> tuple[int, subprocess.Popen, str]:
    home = Path(tempfile.mkdtemp(prefix="aispendtrack-streams-"))
    key = make_key(home)
    port = free_port()
    log = home / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), "proxy", "--port", str(port),
                                 "--openai-upstream", f"http://127.0.0.1:{upstream_port}", "--prices-url", "off",
                                 *extra], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    wait_for_port(port, proc)
    deadline = time.monotonic() + 120
    while "Workers:" in log.read_text() and "workers serve" not in log.read_text():  # every worker, not the first
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the workers did not start: {log.read_text()}")
        time.sleep(0.2)
    return port, proc, key


def summarise(name: str, waves: list[Wave], direct: list[Wave], streams: int, events: int) -> dict:
    outcomes: dict[str, int] = {}
    for w in waves:
        for k, v in w.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
    delays = [d for w in waves for d in w.delays]
    base = [d for w in direct for d in w.delays]
    p50, p99 = percentile(delays, 50) * 1000, percentile(delays, 99) * 1000
    b50, b99 = percentile(base, 50) * 1000, percentile(base, 99) * 1000
    per_stream = [(w.rss_peak_kib - w.rss_idle_kib) / streams for w in waves if w.rss_idle_kib]
    return {"target": name, "outcomes": outcomes, "events": len(delays),
            "events_expected": len(waves) * streams * events,
            "cpu_us_per_event": sum(w.cpu_s for w in waves) / max(len(delays), 1) * 1e6 if per_stream else None,
            "p50_ms": p50, "p99_ms": p99, "added_p50_ms": p50 - b50, "added_p99_ms": p99 - b99,
            "kib_per_stream": statistics.median(per_stream) if per_stream else None,
            "rss_idle_mib": statistics.median(w.rss_idle_kib for w in waves) / 1024 if per_stream else None,
            "rss_peak_mib": max(w.rss_peak_kib for w in waves) / 1024 if per_stream else None}


def cap_check(upstream_port: int, cap: int, streams: int) -> dict:
    # One process: the cap is each worker's (addon/settings.py), and SO_REUSEPORT spreads the
    # connections about evenly, not exactly, over several.
    port, proc, key = start_ours(upstream_port, ("--max-connections", str(cap), "--workers", "1"))
    try:
        time.sleep(1)  # the start-up probe's connection is gone
        result = run_loop(wave(port, key, proc.pid, streams, 8, 250, 0.5))
    finally:
        proc.terminate()
        proc.wait(30)
    return {"cap": cap, "streams": streams, "outcomes": result.outcomes}


def run(streams: int, seconds: float, interval_ms: int, rounds: int, ramp_s: float, cap: int, over: int) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the client's sockets; the children inherit it
    events = int(seconds * 1000 / interval_ms)
    up_port = free_port()
    upstream = start([sys.executable, "-c", f"from bench import streams; "
                                            f"streams.run_loop(streams.serve_streams({up_port}))"])
    wait_for_port(up_port, upstream)
    bare_port = free_port()
    bare = mitmdump(up_port, bare_port, ["--set", "stream_large_bodies=1"])
    wait_for_port(bare_port, bare)
    ours_port, ours, key = start_ours(up_port)
    targets = {"direct": (up_port, None, None), "bare mitmdump": (bare_port, None, bare.pid),
               "ours (defaults)": (ours_port, key, ours.pid)}
    waves: dict[str, list[Wave]] = {name: [] for name in targets}
    try:
        for name, (port, k, _) in targets.items():  # warm-up: imports, first connections
            run_loop(wave(port, k, None, 20, 4, 50, 0.1))
        for r in range(rounds):
            for name, (port, k, pid) in targets.items():
                w = run_loop(wave(port, k, pid, streams, events, interval_ms, ramp_s))
                waves[name].append(w)
                print(f"round {r + 1} {name}: {w.outcomes} in {w.seconds:.1f} s", file=sys.stderr, flush=True)
        results = [summarise(name, ws, waves["direct"], streams, events) for name, ws in waves.items()]
        capped = cap_check(up_port, cap, cap + over)
    finally:
        for proc in (ours, bare, upstream):
            proc.terminate()
            proc.wait(30)
    return {"streams": streams, "seconds": seconds, "interval_ms": interval_ms, "rounds": rounds, "ramp_s": ramp_s,
            "nofile": [hard, hard], "nofile_before": [soft, hard], "targets": results, "cap": capped}


def report(figures: dict) -> str:
    lines = [f"{figures['streams']} concurrent streams of {figures['seconds']:g} s, an event every "
             f"{figures['interval_ms']} ms, {figures['rounds']} interleaved round(s), connects ramped over "
             f"{figures['ramp_s']:g} s; ulimit -n {figures['nofile'][0]}",
             f"  {'target':<17} {'complete':>9} {'other outcomes':<28} {'events':>8} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'+p50':>6} {'+p99':>6} {'CPU us/event':>12} {'KiB/stream':>10} {'RSS idle->peak MiB':>19}"]
    for t in figures["targets"]:
        other = ", ".join(f"{k}: {v}" for k, v in t["outcomes"].items() if k != "complete") or "none"
        memory = (f"{t['cpu_us_per_event']:>12.0f} {t['kib_per_stream']:>10.1f} {t['rss_idle_mib']:>8.0f} -> "
                  f"{t['rss_peak_mib']:<7.0f}" if t["kib_per_stream"] is not None else "")
        lines.append(f"  {t['target']:<17} {t['outcomes'].get('complete', 0):>9} {other:<28} "
                     f"{t['events']:>8} {t['p50_ms']:>7.2f} {t['p99_ms']:>7.2f} {t['added_p50_ms']:>+6.2f} "
                     f"{t['added_p99_ms']:>+6.2f} {memory}")
    cap = figures["cap"]
    served, refused = cap["outcomes"].get("complete", 0), cap["outcomes"].get("503 with retry-after", 0)
    ok = served == cap["cap"] and refused == cap["streams"] - cap["cap"]
    lines.append(f"cap: --max-connections {cap['cap']}, {cap['streams']} streams at once: {cap['outcomes']} "
                 f"({'ok' if ok else 'MISSED'}: {cap['cap']} complete and {cap['streams'] - cap['cap']} "
                 "503 with retry-after expected)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--interval-ms", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which the streams connect")
    parser.add_argument("--cap", type=int, default=500)
    parser.add_argument("--over", type=int, default=200, help="streams past --cap in the cap check")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = run(args.streams, args.seconds, args.interval_ms, args.rounds, args.ramp, args.cap, args.over)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
