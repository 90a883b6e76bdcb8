"""``aispendtrack proxy --workers N``: N mitmproxy processes accept on one port, under one parent.

One mitmproxy process uses one core. Each worker is a whole proxy (cli/proxy.py ``serve``) that
listens with SO_REUSEPORT (addon/bounds.py ``share_ports``), so the kernel spreads connections
over them; each has a data directory of its own under ``<home>/workers/<slot>`` (its lock, its
spill files), as a replica of the shared mode has. The parent holds ``<home>``'s lock, serves
``--metrics-port`` once (the workers' metrics merged: addon/core/metrics_merge.py) and, in the
shared mode, the web app, restarts a worker that dies, and stops them all on SIGTERM or SIGINT.

In the shared mode each worker is a replica (its own connection to PostgreSQL and the lake, limits
and budgets counted there). In the embedded mode one more child, the owner (cli/embedded.py), holds
the DuckDB file; it starts first, and is restarted like a worker if it dies, while the workers go
on proxying. The workers share ``<home>`` and reach its file only through the owner's socket (their
spill files in ``<home>/workers/<slot>``), their limits and budgets in the host's shared counts.
The web app runs in the owner, next to the data, on the web port the parent binds (WebHandover).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from addon.core import home as home_dir

log = logging.getLogger("aispendtrack.workers")

MAX_DEFAULT_WORKERS = 8  # past this the PostgreSQL connections (~6 a worker) and lake commits cost more
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # this process's cgroup's CPU quota, as a container sees it
WORKERS_DIR = home_dir.WORKERS_DIR
STOP_WAIT_S = 30.0  # a worker's own stop (in-flight calls recorded, rows flushed) takes a few seconds, after its drain
BACKOFF_S = (0.5, 1, 2, 5, 10, 30)  # before each further restart of a slot whose workers keep dying
STABLE_S = 60.0  # a worker that served this long resets its slot's backoff
METRICS_READ_S = 5.0  # how often the parent reads the workers' counters, so a kill -9 loses little
_PR_SET_PDEATHSIG = 1


def default_count() -> int:
    """The cores this process may run on, fewer if a container's CPU quota allows fewer, at most
    MAX_DEFAULT_WORKERS: in either mode a second worker served 1.6-1.8x one on 2 cores
    (docs/benchmarks.md, "Peers"); one core keeps one process."""
    cores = getattr(os, "process_cpu_count", None)
    count = cores() if cores else len(os.sched_getaffinity(0))
    quota = _quota_cpus()
    if quota is not None:
        count = min(count or quota, quota)
    return max(1, min(count or 1, MAX_DEFAULT_WORKERS))


def _quota_cpus() -> int | None:
    """The CPUs a cgroup v2 quota grants (``cpu.max`` "150000 100000": 2), None without a quota.
    A container limited with --cpus sees every core of its host, and each worker costs ~300 MB:
    the quota, not the host, says how many can run."""
    try:
        quota, period = CPU_MAX.read_text().split()
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 here, or a file we do not understand: no quota
        return None


class WebHandover:
    """``--web-port`` under ``--workers N``, embedded: the parent binds the port and hands the
    listening socket to each owner it starts, which serves the web app and API next to the data, a
    cursor per request (through the owner's socket, an API request cost ~14 round trips and a
    thread: 220 requests/s against 310 in the owner, docs/benchmarks.md). Bound here, the port
    outlives an owner that dies: requests sent meanwhile wait in its queue for the next owner."""

    def __init__(self, host: str, port: int, trusted_proxies: tuple[str, ...]) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        self.socket = socket.socket(family, kind, proto)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds its own
        self.socket.bind(address)
        self.socket.listen(1024)
        self.host, self.port, self.trusted_proxies = host, port, trusted_proxies

    def options(self, metrics_url: str) -> dict:
        """What the owner needs (cli/embedded.py): the descriptor, and where the host's metrics are."""
        return {"fd": self.socket.fileno(), "host": self.host, "port": self.port,
                "trusted_proxies": list(self.trusted_proxies), "metrics_url": metrics_url}


@dataclass
class Worker:
    slot: int
    process: subprocess.Popen
    metrics_url: str
    ready_fd: int  # the parent's end of the pipe the worker writes one byte to once it serves
    started: float = field(default_factory=time.monotonic)
    ready: bool = False

    def poll_ready(self) -> bool:
        if not self.ready:
            try:
                self.ready = bool(os.read(self.ready_fd, 1))
            except BlockingIOError:
                pass
        return self.ready

    def close(self) -> None:
        os.close(self.ready_fd)
        if self.process.stdin:
            self.process.stdin.close()


class Supervisor:
    def __init__(self, count: int, home: Path, mitm_options: dict, addon_options: dict,
                 embedded: bool = False, web: WebHandover | None = None) -> None:
        self.count, self.home, self.embedded, self.web = count, home, embedded, web
        self.mitm_options, self.addon_options = mitm_options, addon_options
        self.workers: dict[int, Worker] = {}
        self.deaths: dict[int, int] = {}  # slot -> consecutive deaths, for the backoff
        self.restart_at: dict[int, float] = {}
        # Signals counted, not an Event set in the handler: a handler runs between two bytecodes of
        # the main thread, which may hold the Event's lock then (inside its wait): set() would deadlock.
        self.signals = 0
        self.owner: Worker | None = None  # embedded: the child that holds the data file
        self.owner_deaths = 0
        self.owner_restart_at = 0.0
        from addon.core import metrics
        from addon.core.metrics_merge import Merged
        self.metrics = Merged(self.metrics_urls, addon_options["aispendtrack_metrics_label_cap"])
        metrics.install(self.metrics)  # what --metrics-port and the web port's /metrics serve
        self.relay = None  # the owner's web app reads the host's metrics here (127.0.0.1, a port of its own)
        if web is not None:
            from addon import metrics_port
            self.relay = metrics_port.serve("127.0.0.1", 0)

    def metrics_urls(self) -> dict[int, str]:
        # Serving: a worker still starting (or failing to) is not one (aispendtrack_workers counts these).
        return {slot: w.metrics_url for slot, w in list(self.workers.items()) if w.ready and w.process.poll() is None}

    def run(self) -> int:
        """Until SIGTERM or SIGINT (exit 0), or a worker that fails at the first start (its exit code)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._asked_to_stop)
        # Rows an earlier run spilled and no worker of this one would replay (a lone proxy's, or a slot
        # past this count): to slot 0, whose worker replays them.
        if moved := home_dir.gather_spills(self.home, home_dir.spill_dir(self.home, 0)):
            log.info("%d spill files of an earlier run moved to worker 0's: stored once it runs", moved)
        if self.embedded:
            code = self._first_owner()
            if code is not None:  # it failed, or a stop came first
                self._stop_all()
                return code
        for slot in range(self.count):
            self.workers[slot] = self._spawn(slot)
        code = self._watch()
        self._stop_all()
        return code

    def _asked_to_stop(self, *_) -> None:
        """The first signal: each worker drains (_stop_all). A second: passed on, so that each stops at
        once, as a lone proxy does (it waited for the whole drain)."""
        self.signals += 1
        if self.signals == 1:
            return
        for worker in list(self.workers.values()):
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)

    def _stop_asked(self, within: float) -> bool:
        if not self.signals:
            time.sleep(within)
        return self.signals > 0

    def _watch(self) -> int:
        next_read = time.monotonic() + METRICS_READ_S
        announced = False
        while not self._stop_asked(0.1):
            if self.embedded:
                self._check_owner()
            for slot in range(self.count):
                code = self._check(slot)
                if code is not None:
                    return code
            if not announced and len(self.workers) == self.count and all(w.ready for w in self.workers.values()):
                announced = True
                log.info("all %d workers serve", self.count)
            if time.monotonic() >= next_read:
                self.metrics.read()  # on the main thread: a scrape never waits for this
                next_read = time.monotonic() + METRICS_READ_S
        return 0

    def _check(self, slot: int) -> int | None:
        worker = self.workers.get(slot)
        if worker is None:
            # Embedded, a worker starts by reading the keys from the owner: while the owner is away it
            # could only fail, after taking connections on the shared port and resetting them.
            owner_serves = not self.embedded or self.owner is not None and self.owner.ready
            if owner_serves and time.monotonic() >= self.restart_at.get(slot, 0):
                self.workers[slot] = self._spawn(slot)
            return None
        if not worker.ready and worker.poll_ready() and self.deaths.get(slot):
            log.info("worker %d (pid %d) serves in place of the one that died", slot, worker.process.pid)
        code = worker.process.poll()
        if code is None:
            if worker.ready and time.monotonic() - worker.started > STABLE_S:
                self.deaths[slot] = 0
            return None
        worker.close()
        del self.workers[slot]
        # A first start that exits (a bad option, a port taken) stops them all; one killed by a signal
        # (kill -9, the OOM killer, at start-up's memory peak) is replaced like any other.
        if not worker.ready and self.metrics.restarts == 0 and not self.deaths.get(slot) and code > 0:
            log.error("worker %d (pid %d) exited at start (%s); stopping the others", slot, worker.process.pid,
                      _how(code))
            return code
        deaths = self.deaths[slot] = self.deaths.get(slot, 0) + 1
        delay = BACKOFF_S[min(deaths, len(BACKOFF_S)) - 1]
        self.restart_at[slot] = time.monotonic() + delay
        self.metrics.restarts += 1
        log.warning("worker %d (pid %d) %s; starting another in %g s (the other workers serve meanwhile)",
                    slot, worker.process.pid, _how(code), delay)
        return None

    def _first_owner(self) -> int | None:
        """Start the owner and wait until it serves (the workers need it to start); its exit code if it
        cannot (a bad option, a file another process holds)."""
        self.owner = self._spawn_owner(seed=True)
        while not self.owner.poll_ready():
            code = self.owner.process.poll()
            if code is not None or self._stop_asked(0.1):
                if code is None:
                    return 0
                log.error("the owner of the data (pid %d) exited at start (%s)", self.owner.process.pid, _how(code))
                self.owner.close()
                self.owner = None
                return code if code > 0 else 1
        return None

    def _check_owner(self) -> None:
        owner = self.owner
        if owner is None:
            if time.monotonic() >= self.owner_restart_at:
                self.owner = self._spawn_owner(seed=False)
            return
        if not owner.ready and owner.poll_ready() and self.owner_deaths:
            log.info("the owner of the data (pid %d) serves again: the workers' waiting rows go to it now",
                     owner.process.pid)
        code = owner.process.poll()
        if code is None:
            if owner.ready and time.monotonic() - owner.started > STABLE_S:
                self.owner_deaths = 0
            return
        owner.close()
        self.owner = None
        self.owner_deaths += 1
        self.metrics.owner_restarts += 1
        delay = BACKOFF_S[min(self.owner_deaths, len(BACKOFF_S)) - 1]
        self.owner_restart_at = time.monotonic() + delay
        log.warning("the owner of the data (pid %d) %s; starting another in %g s (the workers go on proxying, "
                    "their rows wait for it)", owner.process.pid, _how(code), delay)

    def _spawn_owner(self, seed: bool) -> Worker:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        config = {"home": str(self.home), "addon": self.addon_options, "seed": seed, "ready_fd": write_end,
                  "parent": os.getpid(), "web": None}
        fds = [write_end]
        if self.web is not None and self.relay is not None:
            config["web"] = self.web.options(f"http://127.0.0.1:{self.relay.server_port}/metrics")
            fds.append(self.web.socket.fileno())
        process = self._child("from cli.embedded import main; main()", config, *fds)
        log.info("owner of the data started (pid %d)", process.pid)
        return Worker(-1, process, "", read_end)

    @staticmethod
    def _child(code: str, config: dict, write_end: int, *shared: int) -> subprocess.Popen:
        """A child reading ``config`` on standard input, kept open: its end tells the child the parent is
        gone. ``write_end`` (its ready pipe) is the child's alone from now; ``shared`` stay open here too."""
        # A process group of its own: Ctrl-C in a terminal signals the foreground group, and a worker
        # that got it beside the parent's SIGTERM took the two for "stop at once", skipping its
        # drain, while the owner closed the file under the workers' last rows. The parent tells each.
        process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                   pass_fds=(write_end, *shared), cwd=os.getcwd(), process_group=0)
        os.close(write_end)
        assert process.stdin is not None
        process.stdin.write(json.dumps(config).encode() + b"\n")
        process.stdin.flush()
        return process

    def _spawn(self, slot: int) -> Worker:
        home = self.home / WORKERS_DIR / str(slot)
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        metrics_port = _free_port()
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        # Embedded: the parent's data directory, reached through its owner; shared: a replica's own.
        homes = ({"aispendtrack_home": str(self.home), "aispendtrack_worker_dir": str(home)} if self.embedded
                 else {"aispendtrack_home": str(home)})
        config = {"mitm": self.mitm_options, "ready_fd": write_end, "parent": os.getpid(),
                  "addon": {**self.addon_options, **homes,
                            "aispendtrack_metrics_host": "127.0.0.1", "aispendtrack_metrics_port": metrics_port}}
        process = self._child("from cli.workers import main; main()", config, write_end)
        log.info("worker %d started (pid %d)", slot, process.pid)
        return Worker(slot, process, f"http://127.0.0.1:{metrics_port}/metrics", read_end)

    def _stop_all(self) -> None:
        """Each worker stops as a lone proxy does on SIGTERM: stops accepting, records the calls in
        flight and flushes its rows. One that takes longer than STOP_WAIT_S is killed, and said so."""
        for worker in list(self.workers.values()):
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        # Its drain first (--drain-s, up to 600 s): a fixed 30 s killed workers draining for 40.
        wait = self.addon_options.get("aispendtrack_drain_s", 0) + STOP_WAIT_S
        deadline = time.monotonic() + wait
        for worker in list(self.workers.values()):
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop within %g s; killed (its unwritten rows wait in its "
                          "spill directory only if it spilled them)", worker.slot, worker.process.pid, wait)
                worker.process.kill()
                worker.process.wait()
            worker.close()
        if self.owner is not None:  # last: the workers' final rows went to it
            self._stop_owner(self.owner)
        if self.relay is not None:
            self.relay.shutdown()
        if self.web is not None:
            self.web.socket.close()

    @staticmethod
    def _stop_owner(owner: Worker) -> None:
        owner.process.send_signal(signal.SIGTERM)
        try:
            owner.process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.error("the owner of the data (pid %d) did not stop within %g s; killed", owner.process.pid,
                      STOP_WAIT_S)
            owner.process.kill()
            owner.process.wait()
        owner.close()


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _free_port() -> int:
    """A port for a worker's private metrics server (127.0.0.1 only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    """A worker: reads its options from the parent on standard input, then serves until SIGTERM, or
    until the parent is gone (the kernel's parent-death signal, and the end of standard input)."""
    config = json.loads(sys.stdin.readline())
    _die_with_parent(config["parent"])
    ready_fd = config["ready_fd"]
    from addon import bounds

    from .proxy import serve
    bounds.share_ports()
    try:
        serve(config["mitm"], config["addon"], on_running=lambda: _tell_ready(ready_fd))
    except click.ClickException as exc:  # a bad option: the parent exits with this code
        exc.show()
        sys.exit(exc.exit_code)


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the end of standard input below does it
        pass
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at end of file: the parent has closed it, or is gone
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch_stdin, name="aispendtrack-parent-watch", daemon=True).start()


def _tell_ready(fd: int) -> None:
    try:
        os.write(fd, b"r")
        os.close(fd)
    except OSError:
        pass
