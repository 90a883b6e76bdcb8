"""How long CLI commands take, as a user runs them, against a bare interpreter start in the same rounds.

    .venv/bin/python -m bench.cli_start                  # about a minute: the embedded mode
    .venv/bin/python -m bench.cli_start --shared         # also the shared mode (a throwaway PostgreSQL)
    git worktree add /tmp/prev REV && .venv/bin/python -m bench.cli_start --shared --previous /tmp/prev
                                                         # also an earlier commit's CLI, in the same rounds

Each command is a new process, as typed at a prompt: ``--help``, ``report --help``, ``report`` on
the calls a running proxy recorded (``--calls``, 400), ``keys list`` and ``keys set-plan``. The proxy
(ours in reverse mode, a canned upstream on 127.0.0.1) keeps receiving a call every 50 ms, so its
writer takes the file every second, as in use. The floor is the interpreter itself:
``python -c pass`` (what every command pays) and ``python -S -c pass`` (without site-packages).

Rounds run every command once, in turn, the order reversed every other round, so that the
machine's drift hits all alike; the figures are medians over rounds, and "x python" is the median
of each round's ratio to ``python -c pass`` in that round. "min" is the fastest round: the
nearest this shared machine comes to idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import loopback
from .proxy_overhead import ROOT, free_port, latency, mitmdump, start, wait_for_port

TRICKLE_S = 0.05  # a call every 50 ms through the proxy while commands run


# Label -> arguments after ``aispendtrack``.
COMMANDS = {"--help": ["--help"], "report --help": ["report", "--help"], "report": ["report"],
            "keys list": ["keys", "list"], "keys set-plan": ["keys", "set-plan", "1", "pro"]}


class Target:
    """A data directory with a proxy on it that keeps receiving calls."""

    def __init__(self, upstream_port: int, env: dict, calls: int) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="aispendtrack-bench-"))
        self.env = {**env, "AISPENDTRACK_HOME": str(self.home), "PYTHONPATH": str(ROOT)}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # as a user runs it: our modules' bytecode is cached
        made = subprocess.run([sys.executable, "-m", "cli", "keys", "create", "--name", "bench", "--json"],
                              capture_output=True, text=True, check=True, cwd=ROOT, env=self.env)
        self.key = json.loads(made.stdout)["key"]
        self.port = free_port()
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        try:
            self.proxy = mitmdump(upstream_port, self.port, ["-s", str(ROOT / "addon" / "aispendtrack.py")])
        finally:
            os.environ.clear()
            os.environ.update(saved)
        wait_for_port(self.port, self.proxy)
        time.sleep(1.5)  # keys loaded
        self.raw = loopback.request_bytes(self.port, False, {"x-aispendtrack-key": self.key})
        asyncio.run(latency(self.port, self.raw, calls))
        self._stop = threading.Event()
        self._trickle = threading.Thread(target=lambda: asyncio.run(self._send()), daemon=True)
        self._trickle.start()

    async def _send(self) -> None:
        conn = await loopback.Connection.open(self.port)
        try:
            while not self._stop.is_set():
                await conn.request(self.raw, time.perf_counter)
                await asyncio.sleep(TRICKLE_S)
        finally:
            conn.close()

    def run(self, root: Path, args: list[str]) -> float:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=root, capture_output=True, text=True,
                              env={**self.env, "PYTHONPATH": str(root)})
        took = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{args} failed in {root}: {done.stderr[-500:]}")
        return took

    def stop(self) -> None:
        self._stop.set()
        self._trickle.join(10)
        self.proxy.terminate()
        self.proxy.wait(30)
        shutil.rmtree(self.home, ignore_errors=True)


def measure(target: Target, rounds: int, previous: Path | None) -> dict[str, list[float]]:
    python = [sys.executable, "-c", "pass"]
    jobs: list[tuple[str, object]] = [
        ("python -c pass", lambda: _time(python, target.env)),
        ("python -S -c pass", lambda: _time([sys.executable, "-S", "-c", "pass"], target.env))]
    for root, suffix in ((ROOT, ""), *([(previous, " (previous)")] if previous else [])):
        for label, args in COMMANDS.items():
            jobs.append((label + suffix, lambda root=root, args=args: target.run(root, args)))
    for _, job in jobs:  # warm-up: bytecode written, files in the page cache
        job()  # type: ignore[operator]
    samples: dict[str, list[float]] = {label: [] for label, _ in jobs}
    for n in range(rounds):
        for label, job in (jobs[::-1] if n % 2 else jobs):
            samples[label].append(job())  # type: ignore[operator]
    return samples


def _time(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, env=env)
    return time.perf_counter() - started


def show(title: str, samples: dict[str, list[float]]) -> None:
    base = samples["python -c pass"]
    print(f"\n{title}")
    print(f"  {'command':28} {'min ms':>7} {'median ms':>10} {'over python':>12} {'x python':>9}")
    for label, values in samples.items():
        ratio = statistics.median(v / b for v, b in zip(values, base))
        over = statistics.median(v - b for v, b in zip(values, base))
        print(f"  {label:28} {min(values) * 1000:7.0f} {statistics.median(values) * 1000:10.0f} "
              f"{over * 1000:12.0f} {ratio:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=400, help="calls recorded before the report")
    parser.add_argument("--shared", action="store_true", help="also the shared mode (needs Debian's postgresql)")
    parser.add_argument("--previous", type=Path, metavar="DIR",
                        help="also the CLI of this checkout (an earlier commit), in the same rounds")
    args = parser.parse_args()
    previous = args.previous.resolve() if args.previous else None
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.rounds} rounds")
    up_port = free_port()
    upstream = start([sys.executable, "-c", f"import asyncio; from bench import loopback; "
                                            f"asyncio.run(loopback.serve_upstream({up_port}))"])
    plain = {k: v for k, v in os.environ.items() if k not in ("AISPENDTRACK_CATALOG", "AISPENDTRACK_DATA_PATH")}
    try:
        wait_for_port(up_port, upstream)
        target = Target(up_port, plain, args.calls)
        try:
            show(f"embedded: {args.calls} calls, a proxy running", measure(target, args.rounds, previous))
        finally:
            target.stop()
        if args.shared:
            _shared(up_port, plain, args, previous)
    finally:
        upstream.terminate()
        upstream.wait(10)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


def _shared(up_port: int, plain: dict, args: argparse.Namespace, previous: Path | None) -> None:
    from tests.pg import Cluster

    cluster = Cluster()
    try:
        cluster.wait_ready()
        lake = tempfile.mkdtemp(prefix="aispendtrack-lake-")
        env = {**plain, "AISPENDTRACK_CATALOG": cluster.create_database("bench"), "AISPENDTRACK_DATA_PATH": lake}
        target = Target(up_port, env, args.calls)
        try:
            show(f"shared (DuckLake + PostgreSQL on 127.0.0.1): {args.calls} calls, a proxy running",
                 measure(target, args.rounds, previous))
        finally:
            target.stop()
            shutil.rmtree(lake, ignore_errors=True)
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()
