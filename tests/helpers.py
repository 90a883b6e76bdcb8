"""What several test modules share: the real proxy started as a user would, CLI runs, rows to
store, a webhook receiver, price arithmetic. Fixtures stay in conftest.py; tests import from here,
never from conftest or from each other."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import httpx
import openai
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from addon.core import host_counters
from addon.core.store import calls as call_rows
from cli.main import cli


def call_row(n: int, **changes) -> dict:
    """A stored call's row: ``n`` input tokens, ``n`` seconds after noon on 2026-11-25 UTC."""
    row: dict[str, object] = {name: None for name in call_rows.COLUMN_NAMES}
    row.update(id=uuid.uuid4(), ts=dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=n),
               key_id=1, provider="openai", endpoint="/v1/chat/completions", model="gpt-4o", stream=False,
               status=200, outcome="completed", input_tokens=n, cache_read_tokens=0, cache_write_tokens=0,
               cache_write_1h_tokens=0, output_tokens=0, reasoning_tokens=0, web_search_requests=0,
               cost_usd=Decimal("0.01"), priced=True, usage_source="reported", customer_id=f"c{n}")
    row.update(changes)
    return row


def empty_host_counters(path: Path) -> host_counters.HostCounters:
    """A fresh file of the embedded workers' shared counts (addon/core/host_counters.py), opened here
    as a worker opens it: in this process, so mutation testing reaches the host-count branches."""
    epoch = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # the slots are empty: any period start
    host_counters.create(path, {}, epoch, epoch)
    return host_counters.HostCounters(path)


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True once the other side has closed the connection (EOF or a reset) within ``within`` s."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


CHROMIUM = Path("/usr/bin/chromium")  # Debian's, driven by Playwright (tests/conftest.py's browser)


@contextlib.contextmanager
def chromium():
    """Headless Chromium, closed (with Playwright's event loop) on leaving."""
    from playwright import sync_api
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield launched
        finally:
            launched.close()


FLUSH_MS = 100
# Every provider behind a prefix is pointed at the same fake upstream.
PREFIXED = ("google", "vertex", "cohere", "mistral", "azure", "openrouter", "groq", "deepseek", "x-ai", "together",
            "fireworks")


def scrape(url: str, **kwargs) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a ``/metrics`` page, as a Prometheus server would read it."""
    response = httpx.get(url, timeout=5, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def slowest_write(samples: dict) -> float:
    """The upper edge of the slowest writer cycle's bucket in ``aispendtrack_writer_cycle_seconds``."""
    buckets = sorted((float(dict(labels)["le"]), count) for (name, labels), count in samples.items()
                     if name == "aispendtrack_writer_cycle_seconds_bucket")
    total = buckets[-1][1]
    assert total > 0, "no write was timed"
    return next(edge for edge, count in buckets if count == total)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this test run handed out before: the kernel may offer the
    same free port twice in a row, and a test that takes two (proxy and metrics) would then collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def invoke(home: Path, *args: str):
    """The CLI's result (exit code, output), whatever its exit code."""
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def run_cli(home: Path, *args: str) -> str:
    result = invoke(home, *args)
    assert result.exit_code == 0, result.output
    return result.output


@dataclass
class Proxy:
    home: Path
    url: str
    key: str
    key_id: int
    log_path: Path
    process: subprocess.Popen
    metrics_url: str = ""  # with start_proxy(metrics=True)

    def openai(self, **kwargs) -> openai.OpenAI:
        headers = {"x-aispendtrack-key": self.key, **kwargs.pop("headers", {})}
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", "sk-test-key"),
                             default_headers=headers, max_retries=0, **kwargs)

    def anthropic(self, **kwargs) -> anthropic.Anthropic:
        headers = {"x-aispendtrack-key": self.key, **kwargs.pop("headers", {})}
        return anthropic.Anthropic(base_url=self.url, api_key=kwargs.pop("api_key", "sk-ant-test-key"),
                                   default_headers=headers, max_retries=0, **kwargs)

    def calls(self, limit: int = 1000) -> list[dict]:
        return json.loads(run_cli(self.home, "calls", "--limit", str(limit), "--format", "json"))

    def rows(self, customer_id: str, expect: int = 1, timeout: float = 20.0) -> list[dict]:
        """The rows tagged with ``customer_id``, once ``expect`` of them are stored (or what is stored
        after ``timeout``: a loaded CI host has taken over 5 s to flush a proxy's rows)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [r for r in self.calls() if r["customer_id"] == customer_id]
            if len(rows) >= expect or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def until_stored(self, tags: set[str], timeout: float = 20.0) -> set[str]:
        """The customer ids stored, once every one of ``tags`` is (or what is stored after ``timeout``):
        a call's row reaches the store a flush after its answer, later on a loaded host."""
        deadline = time.monotonic() + timeout
        while True:
            stored = {r["customer_id"] for r in self.calls(limit=1_000_000)}
            if tags <= stored or time.monotonic() > deadline:
                return stored
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)


def hold_read_only(db: Path, seconds: float, encryption_key: str | None = None) -> subprocess.Popen:
    """Another process holding the DuckDB file read-only for ``seconds``: the shared lock that keeps
    every writer out. Returns once the lock is held."""
    options = f"ENCRYPTION_KEY '{encryption_key}', READ_ONLY" if encryption_key else "READ_ONLY"
    attach = f"ATTACH '{db}' AS held ({options})"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, time\n"
        "con = duckdb.connect()\n"  # kept in a name: a dropped connection would let go of the file
        f"con.execute({attach!r})\n"
        "print('locked', flush=True)\n"
        f"time.sleep({seconds})\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def until_admitted(call, within: float, why: str) -> None:
    """Repeat ``call`` until the proxy stops answering it with a 429: a raised limit or budget reaches
    the running proxy within seconds, not at once."""
    deadline = time.monotonic() + within
    while True:
        try:
            call()
            return
        except openai.RateLimitError:
            assert time.monotonic() < deadline, why
            time.sleep(0.2)


def key_with_blocking_budget(home: Path, customer: str, **usd: str) -> dict:
    """A new key ("budgeted", as ``keys create --json`` prints it) with a blocking budget on
    ``customer``'s calls through it; ``usd``: daily=..., monthly=..."""
    created = json.loads(run_cli(home, "keys", "create", "--name", "budgeted", "--json"))
    periods = [arg for period, limit in usd.items() for arg in (f"--{period}", limit)]
    run_cli(home, "budgets", "set", "--scope", f"customer:{customer}", "--key", str(created["id"]), *periods, "--block")
    return created


# Every proxy start_proxy started, in order: tests/conftest.py stops those a test left running.
STARTED: list[Proxy] = []


def start_proxy(home: Path, upstream_url: str, log_path: Path, key: str | None = None,
                flush_ms: int = FLUSH_MS, extra_args: tuple[str, ...] = (), port: int | None = None,
                run_under: tuple[str, ...] = (), metrics: bool = False, timeout: float = 60) -> Proxy:
    """``run_under``: a command the proxy runs under, e.g. ("prlimit", "--nofile=400:400", "--");
    ``metrics``: serve /metrics on a port of its own (``proxy.metrics_url``)."""
    if key is None:
        created = json.loads(run_cli(home, "keys", "create", "--name", "tests", "--json"))
        key, key_id = created["key"], created["id"]
    else:
        key_id = json.loads(run_cli(home, "keys", "list", "--json"))[0]["id"]
    port = port or free_port()
    metrics_port = free_port() if metrics else 0
    if metrics:
        extra_args = (*extra_args, "--metrics-port", str(metrics_port))
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [*run_under, sys.executable, "-m", "cli", "--home", str(home), "proxy", "--port", str(port),
         "--openai-upstream", upstream_url, "--anthropic-upstream", upstream_url, "--flush-ms", str(flush_ms),
         *[arg for name in PREFIXED for arg in ("--upstream", f"{name}={upstream_url}")],
         # Tests price with the installed package's data unless they serve their own (test_price_refresh.py).
         *(() if "--prices-url" in extra_args else ("--prices-url", "off")),
         # One process per proxy, as these tests were written for; tests/test_workers.py runs several.
         *(() if "--workers" in extra_args else ("--workers", "1")), *extra_args],
        stdout=log, stderr=subprocess.STDOUT)
    proxy = Proxy(home, f"http://127.0.0.1:{port}", key, key_id, log_path, process,
                  f"http://127.0.0.1:{metrics_port}/metrics" if metrics else "")
    STARTED.append(proxy)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"proxy exited: {log_path.read_text()}")
        try:
            if httpx.get(f"{proxy.url}/aispendtrack/health", timeout=1).status_code == 200:
                return proxy
        except httpx.HTTPError:
            time.sleep(0.1)
    proxy.stop()
    raise RuntimeError(f"proxy did not start: {log_path.read_text()}")


M = Decimal(1_000_000)


def cost(*parts: tuple[int, str]) -> float:
    return float(sum(Decimal(n) * Decimal(rate) for n, rate in parts) / M)


def report_row(ts: str, model: str, cost: str | None, latency: float, customer: str = "acme", feature: str = "chat",
        key_id: int = 1, status: int = 200, usage: str = "reported", provider: str = "openai", **tokens) -> dict:
    return {"id": uuid.uuid4(), "ts": dt.datetime.fromisoformat(ts).replace(tzinfo=dt.UTC), "key_id": key_id,
            "provider": provider, "endpoint": "/v1/chat/completions", "model": model, "stream": False,
            "status": status, "outcome": "completed", "error": None,
            "input_tokens": tokens.get("input_tokens", 100), "cache_read_tokens": tokens.get("cache_read", 0),
            "cache_write_tokens": 0, "cache_write_1h_tokens": 0, "output_tokens": tokens.get("output_tokens", 10),
            "reasoning_tokens": 0, "web_search_requests": 0,
            "cost_usd": Decimal(cost) if cost is not None else None, "priced": cost is not None,
            "price_source": "test" if cost is not None else None, "usage_source": usage, "customer_id": customer,
            "feature": feature, "latency_ms": latency, "ttft_ms": None}


class Receiver:
    """An HTTP endpoint that records what it gets, failing the first ``fail`` requests with a 500."""

    def __init__(self, fail: int = 0) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 500 if len(receiver.requests) <= receiver.fail else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-path"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Endpoint:
    """A URL that speaks for proxies (a load balancer), called with a key like a Proxy."""

    url: str
    key: str

    def openai(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="sk-test-key", max_retries=0,
                             default_headers={"x-aispendtrack-key": self.key}, **kwargs)


LOAD_CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


class Load:
    """Clients calling as fast as they can, each call with its own tag; remembers which completed, and when.
    ``proxy`` is anything with ``openai()``: a Proxy, or an Endpoint (a load balancer)."""

    def __init__(self, proxy, threads: int = 8):
        self.proxy, self.failed = proxy, 0
        self.completed: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, n: int) -> None:
        client = self.proxy.openai(timeout=10)
        while not self._stop.is_set():
            tag = f"load-{uuid.uuid4().hex[:16]}"
            try:
                if n % 2:
                    with client.chat.completions.create(**LOAD_CHAT, stream=True,
                                                        stream_options={"include_usage": True},
                                                        extra_headers={"x-customer-id": tag}) as stream:
                        for _ in stream:
                            pass
                else:
                    client.chat.completions.create(**LOAD_CHAT, extra_headers={"x-customer-id": tag})
            except (openai.APIError, OSError):
                with self._lock:
                    self.failed += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.completed[tag] = time.monotonic()

    def wait_for(self, calls: int, timeout: float = 120) -> None:
        """Until ``calls`` have completed. No test here measures throughput: on a 2-core machine running
        other suites beside this one, 300 calls took over 30 s (a fresh-clone run at load 9-10)."""
        deadline = time.monotonic() + timeout
        while len(self.completed) < calls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.completed) >= calls, f"only {len(self.completed)} calls completed"


BAD_KEYS = "aispendtrack_too_many_bad_keys"  # the 429 an address earns after 30 wrong keys a minute


def until_key_works(call, within: float, why: str):
    """``call()``'s answer once the proxy stops refusing its key: a key made while the proxy runs
    reaches it within its refresh interval. Until then each try is a wrong key to the proxy, and past
    30 in a minute (3 s of tries on a host loaded enough to read keys late) the refusal is a 429."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except (openai.AuthenticationError, openai.RateLimitError) as refused:
            if isinstance(refused, openai.RateLimitError) and refused.code != BAD_KEYS:
                raise
            assert time.monotonic() < deadline, why
            time.sleep(0.25)


def until_read(proxy: Proxy, within: float = 20.0, answers: int = 1) -> None:
    """Return once the running proxy has read the store as it is now: it reads keys, their limits and
    the budgets together, every ~2 s (later on a loaded host), so a key made now being admitted shows
    that it has. The probe carries a tag the proxy refuses (400) once the key passes, so it is never
    forwarded, counted or stored. ``answers``: admitted that many times in a row, each on a new
    connection (``proxy --workers``: the kernel spreads them over workers that each read the store)."""
    probe = json.loads(run_cli(proxy.home, "keys", "create", "--name", "probe", "--json"))["key"]
    in_a_row = 0

    def admitted() -> bool:
        nonlocal in_a_row
        answer = httpx.post(f"{proxy.url}/v1/chat/completions", json={}, timeout=10,
                            headers={"x-aispendtrack-key": probe, "x-customer-id": "x" * 129})
        in_a_row = in_a_row + 1 if answer.status_code == 400 else 0
        return in_a_row >= answers
    # Each try before the read is a wrong key to the proxy's guard (30 a minute): a few, not a flood.
    until(admitted, within, "the proxy did not read the store", every=0.5 if answers == 1 else 0.1)


def until_refused(call, within: float, why: str) -> None:
    """Return once ``call()`` is refused (401): a revoked key is refused within the refresh interval."""
    deadline = time.monotonic() + within
    while True:
        try:
            call()
        except openai.AuthenticationError:
            return
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def migrated_before(con, migration) -> None:
    """Apply and record every migration before ``migration``: a file as the version before it left it,
    but for the customer key's columns (m033, m034), which calls.insert writes: there, as those add them."""
    from addon.core.store import calls, migrations, rollups

    con.execute("CREATE TABLE schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ)")
    for earlier in migrations.MIGRATIONS[:migrations.MIGRATIONS.index(migration)]:
        earlier(con)
        con.execute("INSERT INTO schema_migrations VALUES (?, now())", [earlier.__name__])
    tables = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    for tier in rollups.TIERS:
        if tier.table in tables:
            for statement in tier.key_ddl:
                con.execute(statement)
    con.execute(calls.CUSTOMER_KEY_COLUMN.format(table="calls"))


def migrations_from(migration) -> list[str]:
    """The names of ``migration`` and of every one after it: what apply_pending reports for a store
    from before it."""
    from addon.core.store import migrations

    return [later.__name__ for later in migrations.MIGRATIONS[migrations.MIGRATIONS.index(migration):]]


def clear_of_utc_midnight(margin: float = 60) -> dt.datetime:
    """Now, at least ``margin`` seconds after a UTC midnight and before the next: for a test whose
    rows and daily check must fall on one UTC day (CI runs at any hour, midnight included)."""
    now = dt.datetime.now(dt.UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if (midnight + dt.timedelta(days=1) - now).total_seconds() < margin:
        time.sleep((midnight + dt.timedelta(days=1) - now).total_seconds() + margin)
    elif (now - midnight).total_seconds() < margin:
        time.sleep(margin - (now - midnight).total_seconds())
    return dt.datetime.now(dt.UTC)


def until(check, within: float, why: str, every: float = 0.1):
    """``check()``'s first truthy answer, asked every ``every`` seconds for at most ``within``."""
    deadline = time.monotonic() + within
    while not (found := check()):
        assert time.monotonic() < deadline, why
        time.sleep(every)
    return found


def read_rollups(monkeypatch) -> None:
    """Reports read the rollups, however few the calls (reports.RAW_SCAN_MAX) and whatever tier
    they read (reports.RAW_OVER_FINE): for tests about the rollups, not the raw scans that answer
    instead where they read less."""
    from addon.core.store import reports
    monkeypatch.setattr(reports, "RAW_SCAN_MAX", 0)
    monkeypatch.setattr(reports, "RAW_OVER_FINE", False)
