"""Embedded mode: one proxy per data directory. A second one exits at once and names the first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from .helpers import free_port, start_proxy

REPO = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_a_second_proxy_on_the_same_directory_is_refused_and_the_first_keeps_serving(tmp_path, upstream):
    first = start_proxy(tmp_path / "home", upstream.url, tmp_path / "first.log")
    try:
        port = free_port()
        second = subprocess.run(
            [sys.executable, "-m", "cli", "--home", str(first.home), "proxy", "--port", str(port),
             "--openai-upstream", upstream.url], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"process {first.process.pid}, listening on" in second.stderr
        assert "Running several proxies" in second.stderr and "Traceback" not in second.stderr
        assert "No keys yet" not in second.stdout and "proxy on" not in second.stdout  # refused before anything

        # Plain mitmdump with the addon gets the same refusal, and exits.
        mitmdump = Path(sys.executable).parent / "mitmdump"
        plain = subprocess.run(
            [str(mitmdump), "-q", "-s", str(REPO / "addon" / "aispendtrack.py"), "--mode", f"reverse:{upstream.url}",
             "--listen-port", str(port), "--set", f"aispendtrack_home={first.home}"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
        assert plain.returncode != 0
        assert f"process {first.process.pid}" in plain.stdout + plain.stderr

        # The first proxy never noticed: it serves and records.
        assert httpx.get(f"{first.url}/aispendtrack/health", timeout=5).status_code == 200
        first.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "still-first"})
        assert len(first.rows("still-first")) == 1
    finally:
        first.stop()
    # Once it stops (or dies: the kernel drops its lock), the directory is free again.
    again = start_proxy(first.home, upstream.url, tmp_path / "again.log", key=first.key)
    again.stop()
