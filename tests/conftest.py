"""Fixtures: a fake provider on loopback, and the real proxy (``aispendtrack proxy``) in front of it."""

from __future__ import annotations

import uuid

import pytest

from .helpers import start_proxy
from .pg import Cluster
from .upstream import FakeProvider


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
