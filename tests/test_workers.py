"""`aispendtrack proxy --workers N`: N mitmproxy processes on one port under one parent (cli/workers.py).

The shared mode here (a throwaway PostgreSQL, tests/pg.py); the embedded mode's N workers in
tests/test_workers_embedded.py. Clients are the official OpenAI SDK; the upstream is tests/upstream.py's
OpenAI on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from .helpers import free_port, run_cli, start_proxy

REPO = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (the workers of a proxy)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def start_workers(home: Path, upstream_url: str, log_path: Path, workers: int, *args: str, **kwargs):
    """A proxy of ``workers`` workers, once every one of them serves (the parent says so in its log).
    Starting several mitmproxy processes on a loaded 2-core machine takes a while: up to 90 s here."""
    proxy = start_proxy(home, upstream_url, log_path, extra_args=("--workers", str(workers), *args), timeout=90,
                        **kwargs)
    wait_for(lambda: f"all {workers} workers serve" in log_path.read_text(), 90, "not every worker started")
    return proxy


def stop(proxy) -> int:
    """SIGTERM, as a service manager sends it; the parent's exit code."""
    proxy.process.send_signal(signal.SIGTERM)
    return proxy.process.wait(60)


def rows_tagged(home: Path, prefix: str) -> list[dict]:
    rows = json.loads(run_cli(home, "calls", "--limit", "100000", "--format", "json"))
    return [r for r in rows if (r["customer_id"] or "").startswith(prefix)]


def metric(text: str, name: str) -> list[tuple[str, float]]:
    """The samples of ``name`` in an exposition: (labels, value)."""
    return [(m.group(1) or "", float(m.group(2)))
            for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)]


def calls_counted(proxy) -> float:
    """aispendtrack_calls_total of the 200s, from the parent's merged /metrics."""
    text = httpx.get(proxy.metrics_url, timeout=10).text
    return sum(v for labels, v in metric(text, "aispendtrack_calls_total") if 'status="200"' in labels)


def busiest_worker(proxy) -> int:
    """The pid of the worker holding the most client connections now (a gauge per worker)."""
    text = httpx.get(proxy.metrics_url, timeout=10).text
    served = {labels: v for labels, v in metric(text, "aispendtrack_client_connections") if "served" in labels}
    slot = re.search(r'worker="(\d+)"', max(served, key=lambda labels: served[labels])).group(1)
    return int(re.findall(rf"worker {slot} started \(pid (\d+)\)", proxy.log_path.read_text())[-1])


async def _calls(proxy, n: int, concurrency: int, prefix: str, key: str | None = None) -> list[object]:
    """``n`` calls at once (``concurrency`` in flight): each a completion's usage, or "429"."""
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test-key", max_retries=0, timeout=60,
                                default_headers={"x-aispendtrack-key": key or proxy.key})
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> object:
        async with gate:
            try:
                done = await client.chat.completions.create(**CHAT, extra_headers={"x-customer-id": f"{prefix}{i}"})
                return done.usage
            except openai.RateLimitError as exc:
                assert exc.response.headers["retry-after"].isdigit()
                return "429"
    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


def test_one_worker_in_the_embedded_mode_is_one_process_as_before(tmp_path, upstream):
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log", extra_args=("--workers", "1"))
    try:
        proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "one-0"})
        assert len(proxy.rows("one-0")) == 1
        assert children(proxy.process.pid) == set()
    finally:
        proxy.stop()


@pytest.mark.parametrize("workers", [2, 4])
def test_n_workers_store_one_row_per_call_keep_a_limit_exact_and_sum_their_metrics(shared_env, tmp_path, upstream,
                                                                                   workers):
    home = tmp_path / "home"
    created = json.loads(run_cli(home, "keys", "create", "--name", "free", "--json"))
    limited = json.loads(run_cli(home, "keys", "create", "--name", "limited", "--json"))
    run_cli(home, "keys", "set-limit", str(limited["id"]), "--per-hour", "30")
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", workers, key=created["key"], metrics=True)
    try:
        assert len(children(proxy.process.pid)) == workers
        calls = 40 * workers
        usages = asyncio.run(_calls(proxy, calls, 32, "w-"))
        outcomes = asyncio.run(_calls(proxy, 120, 32, "lim-", key=limited["key"]))
        assert (sum(o != "429" for o in outcomes), outcomes.count("429")) == (30, 90)
        rows = wait_for(lambda: len(r := rows_tagged(home, "w-")) >= calls and r, 20, "rows not stored")
        assert sorted(r["customer_id"] for r in rows) == sorted(f"w-{i}" for i in range(calls))
        assert sum(r["input_tokens"] + r["output_tokens"] for r in rows) == sum(
            u.prompt_tokens + u.completion_tokens for u in usages)
        assert len(wait_for(lambda: len(r := rows_tagged(home, "lim-")) >= 30 and r, 20, "limited rows")) == 30
        text = httpx.get(proxy.metrics_url, timeout=10).text
        assert calls_counted(proxy) == calls + 30
        assert metric(text, "aispendtrack_workers") == [("", float(workers))]
        # A gauge is each worker's own, not a sum: every worker's connection cap, each labelled.
        caps = metric(text, "aispendtrack_client_connections_max")
        assert sorted(labels for labels, _ in caps) == sorted(f'{{worker="{i}"}}' for i in range(workers))
        assert len({v for _, v in caps}) == 1
    finally:
        stop(proxy)


def test_a_worker_killed_with_kill_9_is_replaced_while_the_others_serve(shared_env, tmp_path, upstream):
    home = tmp_path / "home"
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, metrics=True)
    failures: list[float] = []
    served, busy, lock = 0, 0, threading.Lock()
    go, done = threading.Event(), threading.Event()

    def caller() -> None:
        nonlocal served, busy
        client = proxy.openai()  # keeps its connections: those to the killed worker fail once
        while go.wait() and not done.is_set():
            with lock:
                busy += 1
            try:
                client.chat.completions.create(**CHAT)
                with lock:
                    served += 1
            except openai.APIConnectionError:  # a call on the killed worker
                failures.append(time.monotonic())
            finally:
                with lock:
                    busy -= 1
    threads = [threading.Thread(target=caller) for _ in range(4)]
    try:
        before = children(proxy.process.pid)
        for t in threads:
            t.start()
        go.set()
        wait_for(lambda: served >= 20, 30, "no calls served")
        go.clear()
        wait_for(lambda: busy == 0, 30, "calls still running")
        wait_for(lambda: calls_counted(proxy) == served, 20, "calls not counted")  # and read by the parent
        victim = busiest_worker(proxy)
        assert victim in before
        os.kill(victim, signal.SIGKILL)
        at_kill = served
        go.set()  # calls go on while the worker is replaced
        replaced = wait_for(lambda: (now := children(proxy.process.pid)) - before and len(now) == 2 and now, 30,
                            "no new worker")
        replaced_at = time.monotonic()  # 0.5 s at least after the death (the restart's backoff)
        wait_for(lambda: served >= at_kill + 20, 30, "calls stopped after the kill")
        done.set()
        for t in threads:
            t.join(30)
        # Only calls on the killed worker failed: the connections it held and the ones it took as it died.
        assert [t for t in failures if t > replaced_at] == [] and served > at_kill
        assert victim not in replaced and (replaced - before)
        assert f"(pid {victim}) was killed by SIGKILL; starting another" in proxy.log_path.read_text()
        new_pid = (replaced - before).pop()
        wait_for(lambda: f"(pid {new_pid}) serves in place of the one that died" in proxy.log_path.read_text(), 90,
                 "the new worker does not serve")
        # After the replacement every call succeeds and is stored, whichever worker takes it.
        usages = asyncio.run(_calls(proxy, 40, 8, "after-"))
        assert len(usages) == 40
        assert len(wait_for(lambda: len(r := rows_tagged(home, "after-")) >= 40 and r, 20, "rows")) == 40
        # The host's call count keeps the killed worker's: it never goes down. The new worker is read too.
        assert len(metric(httpx.get(proxy.metrics_url, timeout=10).text, "aispendtrack_client_connections_max")) == 2
        wait_for(lambda: calls_counted(proxy) == served + 40, 20, "the killed worker's counts lost")
    finally:
        done.set()
        go.set()
        stop(proxy)


def test_sigterm_stores_every_completed_call_and_leaves_no_worker(shared_env, tmp_path, upstream):
    home = tmp_path / "home"
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, "--flush-ms", "5000")
    workers = children(proxy.process.pid)
    assert len(workers) == 2
    usages = asyncio.run(_calls(proxy, 60, 16, "term-"))  # unwritten yet: the writers flush every 5 s
    assert stop(proxy) == 0
    assert not [pid for pid in workers if alive(pid)]
    rows = rows_tagged(home, "term-")
    assert len(usages) == 60 and sorted(r["customer_id"] for r in rows) == sorted(f"term-{i}" for i in range(60))


@pytest.mark.parametrize("cpu_max,expected", [(None, 8), ("max 100000\n", 8), ("150000 100000\n", 2),
                                               ("50000 100000\n", 1), ("400000 100000\n", 4), ("2 cpus\n", 8)])
def test_the_default_count_is_the_cores_or_a_containers_cpu_quota_at_most_eight(cpu_max, expected, tmp_path,
                                                                                  monkeypatch):
    """On a 16-core host: a container given 1.5 CPUs (`docker run --cpus 1.5`) sees all 16 cores, and
    16 workers of ~300 MB would share 1.5 CPUs; no quota file, no quota, or one not understood: the cores."""
    from cli import workers
    monkeypatch.setattr(os, "process_cpu_count", lambda: 16, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    monkeypatch.setattr(workers, "CPU_MAX", path)
    assert workers.default_count() == expected


@pytest.mark.parametrize("mode", ["shared", "embedded"])
def test_by_default_one_worker_per_core_and_a_killed_parent_takes_them_with_it(mode, request, tmp_path, upstream):
    from cli.workers import default_count
    cores = default_count()  # the cores, or a container's quota, at most 8 (the test below)
    if cores < 2:
        pytest.skip("one core: the default is one process")
    if mode == "shared":
        request.getfixturevalue("shared_env")
    home, log_path = tmp_path / "home", tmp_path / "proxy.log"
    run_cli(home, "keys", "create", "--name", "k")
    with open(log_path, "ab") as log:
        parent = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), "proxy", "--prices-url", "off",
                                   "--port", str(free_port()), "--openai-upstream", upstream.url],
                                  cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: f"all {cores} workers serve" in log_path.read_text(), 90, "not every worker started")
        workers = children(parent.pid)
        assert len(workers) == cores + (mode == "embedded")  # and the owner of the file
    finally:
        parent.kill()
        parent.wait(10)
    wait_for(lambda: not [pid for pid in workers if alive(pid)], 30, "a worker outlived its parent")


def test_workers_that_fail_at_start_stop_the_proxy_with_their_error_once(shared_env, tmp_path, upstream):
    home = tmp_path / "home"
    run_cli(home, "keys", "create", "--name", "k")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cli", "--home", str(home), "proxy", "--workers", "2",
                           "--port", str(free_port()), "--openai-upstream", upstream.url, "--prices-url", "off",
                           "--quota-tz", "Nowhere/Atlantis"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Nowhere/Atlantis" in output, output
    assert output.count("exited at start") == 1 and "starting another" not in output
    assert time.monotonic() - started < 60


def test_the_forward_mode_works_with_workers(shared_env, tmp_path, upstream, monkeypatch):
    home, forward_port = tmp_path / "home", free_port()
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, "--forward-port", str(forward_port))
    try:
        for line in run_cli(home, "ca", "--forward-port", str(forward_port)).splitlines():
            if line.startswith("export ") and "=" in line:  # the client environment it prints
                name, _, value = line[len("export "):].partition("=")
                monkeypatch.setenv(name, value.split("  #")[0].strip())
        monkeypatch.setenv("HTTPS_PROXY", f"http://aispendtrack:{proxy.key}@127.0.0.1:{forward_port}")
        for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        for i in range(12):  # a client each: new connections, which the kernel spreads over the workers
            with openai.OpenAI(api_key="sk-test-forward", max_retries=0) as client:
                client.chat.completions.create(**CHAT, extra_headers={"x-customer-id": f"fwd-{i}"})
        rows = wait_for(lambda: len(r := rows_tagged(home, "fwd-")) >= 12 and r, 20, "forward rows")
        assert sorted(r["customer_id"] for r in rows) == sorted(f"fwd-{i}" for i in range(12))
    finally:
        stop(proxy)


def test_a_worker_killed_at_its_first_start_is_replaced_and_none_starts_while_the_owner_is_away():
    """Probe: a worker killed (kill -9, the OOM killer at start-up's memory peak) before it served
    stopped the whole proxy as a bad option would; and, embedded, a worker started while the owner
    was away could only fail after taking connections on the shared port (12 calls reset of 318),
    again and again. The parent's decisions, on real child processes (``sleep`` stands for a worker)."""
    from types import SimpleNamespace

    from cli import workers as workers_cli

    started: list[subprocess.Popen] = []
    fds: list[int] = []

    def child(*command: str) -> workers_cli.Worker:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        fds.append(write_end)
        started.append(subprocess.Popen(command or ("sleep", "60"), stdin=subprocess.PIPE))
        return workers_cli.Worker(0, started[-1], "", read_end)

    class Watched(workers_cli.Supervisor):
        def _spawn(self, slot: int) -> workers_cli.Worker:
            return child()

    parent = Watched.__new__(Watched)
    parent.count, parent.embedded, parent.deaths, parent.restart_at = 1, True, {}, {}
    parent.metrics = SimpleNamespace(restarts=0)
    parent.owner = child()
    parent.owner.ready = True
    try:
        parent.workers = {0: child("sh", "-c", "exit 3")}  # a bad option: the first start fails
        started[-1].wait(10)
        assert parent._check(0) == 3
        parent.workers = {0: parent._spawn(0)}
        started[-1].kill()
        started[-1].wait(10)
        assert parent._check(0) is None and parent.metrics.restarts == 1  # killed at start: replaced
        time.sleep(workers_cli.BACKOFF_S[0] + 0.1)
        assert parent._check(0) is None and parent.workers[0].process is started[-1]
        parent.workers[0].ready = True
        started[-1].kill()
        started[-1].wait(10)
        parent.owner.ready = False  # the owner was killed too: a new one does not serve yet
        parent._check(0)
        time.sleep(workers_cli.BACKOFF_S[1] + 0.1)
        before = len(started)
        assert parent._check(0) is None and 0 not in parent.workers and len(started) == before
        parent.owner.ready = True  # it serves again: the slot's worker starts
        assert parent._check(0) is None and parent.workers[0].process is started[-1] and len(started) == before + 1
    finally:
        for process in started:
            process.kill()
            process.wait(10)
        for fd in fds:
            os.close(fd)


def test_a_worker_whose_start_logged_an_error_does_not_tell_its_parent_it_serves():
    """mitmproxy ends a process that logs an error while it starts, once the running hooks have run:
    such a worker told its parent it served (which logged "serves in place of the one that died"
    of it, and counted it in aispendtrack_workers) a moment before it exited."""
    import asyncio
    import logging

    from mitmproxy.addons.errorcheck import ErrorCheck
    from mitmproxy.test import taddons

    from cli.proxy import _Running

    async def told(error: bool) -> bool:
        ready: list[bool] = []
        check = ErrorCheck()
        try:
            with taddons.context(check):
                if error:
                    logging.getLogger("addon.test").error("AiSpendTrack cannot start: the catalog does not answer")
                _Running(lambda: ready.append(True)).running()
        finally:
            check.finish()
        return bool(ready)

    async def both() -> tuple[bool, bool]:
        return await told(error=False), await told(error=True)
    assert asyncio.run(both()) == (True, False)
