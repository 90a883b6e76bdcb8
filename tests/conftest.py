"""Fixtures: a fake provider on loopback, and the real proxy (``aispendtrack proxy``) in front of it."""

from __future__ import annotations

import pytest

from .helpers import start_proxy
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
