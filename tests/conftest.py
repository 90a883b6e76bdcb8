"""Fixtures: a fake provider on loopback, and the real proxy (``aispendtrack proxy``) in front of it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from click.testing import CliRunner

from cli.main import cli

from .upstream import FakeProvider

FLUSH_MS = 100
# Every provider behind a prefix is pointed at the same fake upstream.
PREFIXED = ("google", "cohere", "mistral", "azure", "openrouter", "groq", "deepseek", "x-ai", "together", "fireworks")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(home: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
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

    def rows(self, customer_id: str, expect: int = 1, timeout: float = 5.0) -> list[dict]:
        """The rows tagged with ``customer_id``, once ``expect`` of them are stored."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [r for r in self.calls() if r["customer_id"] == customer_id]
            if len(rows) >= expect or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)


def start_proxy(home: Path, upstream_url: str, log_path: Path, key: str | None = None,
                flush_ms: int = FLUSH_MS, extra_args: tuple[str, ...] = ()) -> Proxy:
    if key is None:
        created = json.loads(run_cli(home, "keys", "create", "--name", "tests", "--json"))
        key, key_id = created["key"], created["id"]
    else:
        key_id = json.loads(run_cli(home, "keys", "list", "--json"))[0]["id"]
    port = free_port()
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "--home", str(home), "proxy", "--port", str(port),
         "--openai-upstream", upstream_url, "--anthropic-upstream", upstream_url, "--flush-ms", str(flush_ms),
         *[arg for name in PREFIXED for arg in ("--upstream", f"{name}={upstream_url}")], *extra_args],
        stdout=log, stderr=subprocess.STDOUT)
    proxy = Proxy(home, f"http://127.0.0.1:{port}", key, key_id, log_path, process)
    deadline = time.monotonic() + 30
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
