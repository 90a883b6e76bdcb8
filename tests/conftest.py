"""Fixtures: a fake provider on loopback, and the real proxy (``aispendtrack proxy``) in front of it."""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import pytest

from addon.estimate import Counter
from addon.providers import all_providers
from pricing import PriceBook, listprices

from . import helpers
from .helpers import chromium, empty_host_counters, start_proxy
from .pg import Cluster
from .upstream import FakeProvider


def _under_mutant() -> bool:
    return "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")


def pytest_sessionstart(session: pytest.Session) -> None:
    """mutmut runs each mutant in a process forked from the one that ran the tests on the original
    code: what the list prices' caches hold was worked out there, and would hide a mutant of the
    functions behind them (``_genai_cost``'s audio and image output went unseen)."""
    if _under_mutant():
        listprices._model.cache_clear()
        listprices._linear_rates.cache_clear()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In mutmut's run of one mutant, the test files cheapest first (by the durations of its
    tests that mutmut measured): it stops at the first failure, and a mutant of the API's sign-in
    is caught as well by `test_web_security.py`'s short tests as by `test_reports.py` after a
    minute. Whole files keep their order inside, so no test runs without the ones before it."""
    if not _under_mutant():
        return
    stats = Path("mutmut-stats.json")  # mutmut runs the tests from its mutants/ copy
    if not stats.exists():
        return
    durations = json.loads(stats.read_text())["duration_by_test"]
    cost: collections.Counter[Path] = collections.Counter()
    for item in items:
        cost[item.path] += durations.get(item.nodeid, 0.0)
    items.sort(key=lambda item: cost[item.path])  # stable: a file's tests keep their order


@pytest.fixture(autouse=True)
def _no_proxy_outlives_its_test():
    """Stops the proxies a test started and left running (it failed before its own stop): one left
    running serves no one and takes CPU from every test after it. Fixtures of a wider scope start
    theirs before this runs, so theirs are not touched; a function fixture's own teardown runs first."""
    before = len(helpers.STARTED)
    yield
    for proxy in helpers.STARTED[before:]:
        try:
            proxy.stop()
        except subprocess.TimeoutExpired:
            proxy.process.kill()
            proxy.process.wait()
    del helpers.STARTED[before:]


@pytest.fixture(params=["one process", "host counts"])
def counting(request, tmp_path):
    """``counting(Limiter(zone))``, ``counting(BudgetTracker(zone))``: counting in memory as a proxy
    of one process does, or in the host's shared counts as each worker of the embedded mode does
    (addon/core/host_counters.py, opened in this process, so mutation testing reaches that branch
    too). A test using it gives the same answers either way. Each one counts in a file of its own."""
    made = itertools.count()

    def count(counter):
        if request.param == "host counts":
            counter.host = empty_host_counters(tmp_path / f"counts{next(made)}")
        return counter
    return count


# The pieces that build a call's row in-process (test_call_rows.py, test_bedrock_vertex_rows.py).
@pytest.fixture(scope="module")
def counter(tmp_path_factory):
    counter = Counter(tmp_path_factory.mktemp("cache") / "tiktoken")
    counter.load_in_background().join(60)
    return counter


@pytest.fixture
def providers(counter):
    # Made for each test (it is cheap): mutation testing credits the providers' constructors to
    # every test that uses them, not only to the first test of the module.
    return {p.name: p for p in all_providers(counter)}


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    return PriceBook(tmp_path_factory.mktemp("prices") / "prices.toml")


@pytest.fixture(scope="module")
def upstream():
    with FakeProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream):
    home = tmp_path_factory.mktemp("home")
    running = start_proxy(home, upstream.url, tmp_path_factory.mktemp("logs") / "proxy.log")
    yield running
    running.stop()


@pytest.fixture
def customer(request) -> str:
    """A customer id unique to the test, to find its rows among the module's calls."""
    return f"cust-{request.node.name}"[:128]


def _template() -> Path:
    """A DuckDB file migrated to the current schema, made once per schema and DuckDB version: made
    afresh, a file takes 0.8 s of migrations under load, and mutation testing (docs/testing.md) runs
    the in-process tests thousands of times, each run a new pytest session."""
    from addon.core.store import calls, migrations, writing
    sources = b"".join(Path(m.__file__).read_bytes() for m in (migrations, calls))
    version = hashlib.sha256(sources + duckdb.__version__.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"aispendtrack-test-store-{os.getuid()}-{version}.duckdb"
    if not path.exists():
        made = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
        with writing(made):
            pass
        made.replace(path)  # whole or not at all, even with another session making it too
    return path


@pytest.fixture(scope="session")
def store_template() -> Path:
    return _template()


@pytest.fixture
def new_store(store_template):
    """Puts a freshly migrated, empty DuckDB file at a path (a copy of the template): for tests that
    need a store, not a test of migrating one (those make their own file)."""
    def put(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store_template, path)
        return path
    return put


@pytest.fixture
def migrated_home(tmp_path, new_store) -> Path:
    """A data directory whose store is already migrated (``tmp_path / "home"``)."""
    from addon.core import home as home_dir
    path = tmp_path / "home"
    new_store(home_dir.db_path(path))
    return path


@pytest.fixture(scope="module")
def cluster():
    """A throwaway PostgreSQL cluster for the module's shared-mode tests (tests/pg.py)."""
    running = Cluster()
    yield running
    running.remove()


@pytest.fixture
def shared_env(cluster, tmp_path, monkeypatch):
    """A fresh catalog database and data path, set for this process (in-process CLI) and its children."""
    url = cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("AISPENDTRACK_CATALOG", url)
    monkeypatch.setenv("AISPENDTRACK_DATA_PATH", str(tmp_path / "lake"))
    return url


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the page's tests, one per test module (its event loop runs until the
    module ends: a module whose other tests call asyncio.run takes ``chromium()`` in a test instead)."""
    with chromium() as launched:
        yield launched


@pytest.fixture(params=["UTC", "Asia/Kathmandu"])
def host_zone(request, monkeypatch):
    """The server's own zone must not matter: a test using this runs on a UTC host and on one set to
    +5:45 (a naive datetime mistaken for UTC shows there)."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()
