"""Embedded mode: the proxy owns the DuckDB file (opened once, kept open: store/owner.py), and the
CLI and a standalone web app reach it through the owner's socket while it runs (store/remote.py)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import httpx
import pytest
from click.testing import CliRunner

from addon.core import home as home_dir
from addon.core.store import remote
from cli.main import cli

from .helpers import Load, free_port, run_cli, start_proxy, until, until_key_works, until_refused

REPO = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_the_cli_and_the_api_work_through_the_owner_while_calls_flow(tmp_path, upstream):
    home = tmp_path / "home"
    web_port = free_port()
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", flush_ms=200,
                        extra_args=("--web-port", str(web_port)))
    try:
        sock = remote.socket_path(home)
        assert stat.S_ISSOCK(os.lstat(sock).st_mode) and stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        with pytest.raises(duckdb.IOException, match="lock"):  # the proxy holds the file, between flushes too
            duckdb.connect(str(home_dir.db_path(home)), read_only=True)
        admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
        for n in range(3):
            proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "erase-me"})
            proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": f"kept-{n}"})
        assert len(proxy.rows("erase-me", expect=3)) == 3
        assert len(proxy.rows("kept-2")) == 1  # the last call's row too: the total below counts all six

        with Load(proxy, threads=2) as load, httpx.Client(
                base_url=f"http://127.0.0.1:{web_port}/api/v1", timeout=30,
                headers={"Authorization": f"Bearer {admin}"}) as api:
            total = api.get("/report/total", params={"since": "1d"})
            assert total.status_code == 200 and total.json()["calls"] >= 6, total.text

            report = json.loads(run_cli(home, "report", "--by", "customer", "--format", "json"))
            assert {r["customer_id"]: r["calls"] for r in report}["erase-me"] == 3

            created = json.loads(run_cli(home, "keys", "create", "--name", "second", "--json"))
            second = proxy.openai(headers={"x-aispendtrack-key": created["key"]})
            until_key_works(lambda: second.chat.completions.create(**CHAT), 20,
                            "the key made through the owner was never admitted")
            run_cli(home, "keys", "revoke", str(created["id"]))
            until_refused(lambda: second.chat.completions.create(**CHAT), 20,
                          "the key revoked through the owner was still admitted")

            run_cli(home, "budgets", "set", "--scope", "customer:kept-0", "--monthly", "12.5", "--all-keys")
            budgets = json.loads(run_cli(home, "budgets", "list", "--json"))
            assert [(b["monthly_usd"], b["spent_this_month_usd"] > 0) for b in budgets
                    if b["scope_value"] == "kept-0"] == [(12.5, True)], budgets

            out = tmp_path / "calls.csv"
            run_cli(home, "export", "--out", str(out), "--format", "csv")
            exported = [row["customer_id"] for row in csv.DictReader(out.open())]
            assert exported.count("erase-me") == 3 and "kept-2" in exported

            erased = run_cli(home, "gdpr", "delete", "--customer", "erase-me", "--yes")
            assert "Erased customer erase-me: 3 calls" in erased and "Database rewritten" in erased, erased
            load.wait_for(len(load.completed) + 10)
            assert api.get("/report/total", params={"since": "1d"}).status_code == 200
        assert proxy.rows("erase-me", expect=1, timeout=1) == []
        stored = proxy.until_stored(set(load.completed))  # the last calls' rows may still wait for a flush
        assert load.failed == 0 and set(load.completed) <= stored, "a call was lost around the erase"
    finally:
        proxy.stop()
    assert not remote.socket_path(home).exists()  # a clean stop takes its socket along
    assert "Traceback" not in proxy.log_path.read_text()


def test_a_proxy_killed_with_kill_9_leaves_its_socket_and_the_cli_opens_the_file(tmp_path, upstream):
    home = tmp_path / "home"
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", flush_ms=200)
    proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "before-kill"})
    assert len(proxy.rows("before-kill")) == 1
    proxy.process.send_signal(signal.SIGKILL)
    proxy.process.wait(10)
    assert stat.S_ISSOCK(os.lstat(remote.socket_path(home)).st_mode)  # nobody listens on it now

    rows = json.loads(run_cli(home, "calls", "--format", "json"))
    assert [r["customer_id"] for r in rows] == ["before-kill"]
    run_cli(home, "keys", "create", "--name", "after-kill")  # a write, on the file itself

    again = start_proxy(home, upstream.url, tmp_path / "again.log", key=proxy.key)
    try:  # a new proxy replaces the stale socket and serves through it
        again.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "after-kill"})
        assert len(again.rows("after-kill")) == 1
    finally:
        again.stop()


def _listening(path: Path, mode: int) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, mode)
    server.listen(1)
    return server


@pytest.mark.parametrize("mode,owner,reason", [
    (0o666, None, "may be used by other users (mode 666)"),
    (0o600, 65534, "belongs to user id 65534"),
])
def test_an_owner_socket_open_to_others_or_of_another_user_is_refused(tmp_path, mode, owner, reason):
    home = tmp_path / "home"
    run_cli(home, "keys", "create", "--name", "first")
    server = _listening(remote.socket_path(home), mode)
    try:
        if owner is not None:
            if os.getuid() != 0:
                pytest.skip("making a file of another user needs root")
            os.chown(remote.socket_path(home), owner, owner)
        server.settimeout(0.5)
        result = CliRunner().invoke(cli, ["--home", str(home), "keys", "list", "--json"])
        assert result.exit_code == 1 and reason in result.output and "Traceback" not in result.output
        with pytest.raises(TimeoutError):  # not a byte of a query went to it
            server.accept()
    finally:
        server.close()


def test_a_standalone_web_app_reads_through_the_owner(tmp_path, upstream):
    home = tmp_path / "home"
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", flush_ms=200)
    web_port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), "web", "--port", str(web_port)],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
        proxy.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "seen-by-web"})
        api = f"http://127.0.0.1:{web_port}/api/v1/report"

        def customers() -> list[str]:
            try:
                answer = httpx.get(api, params={"by": "customer", "since": "1d"}, timeout=10,
                                   headers={"Authorization": f"Bearer {admin}"})
            except httpx.HTTPError:
                return []
            return [r["customer_id"] for r in answer.json()] if answer.status_code == 200 else []
        assert until(customers, 30, "the web app never showed the call") == ["seen-by-web"]
    finally:
        web.terminate()
        web.wait(10)
        proxy.stop()


def _raw_session(home: Path) -> socket.socket:
    """A client of the owner's socket speaking its frames by hand (as a careless or hostile one may)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(remote.socket_path(home)))
    sock.settimeout(10)
    remote._send(sock, ("open", {"timeout": 5, "alone": False, "time_limit": None}))
    assert remote._receive(sock)[0] == ("ok", None)
    return sock


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_owner_socket_survives_hostile_frames_and_a_stuck_client(tmp_path):
    """Probe of the owner's socket (store/remote.py): a frame that would run code when unpickled runs
    none; a frame too large or cut short ends only that session; a client stuck mid-frame keeps no
    other caller waiting; descriptors sent along with any request but ``file`` are closed, not kept
    open in the owner for as long as it runs (a client could otherwise exhaust its descriptors)."""
    from addon.core.store import owner as owner_module
    from addon.core.store import writing
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    old_umask = os.umask(0)  # a careless shell: the socket is still 600
    try:
        served = owner_module.start(home / "aispendtrack.duckdb")
    finally:
        os.umask(old_umask)
    try:
        assert stat.S_IMODE(os.stat(remote.socket_path(home)).st_mode) == 0o600
        marker = tmp_path / "ran"
        evil = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
        sock = _raw_session(home)
        sock.sendall(remote._HEADER.pack(len(evil)) + evil)
        (status, (_, name, text)), _ = remote._receive(sock)
        assert status == "error" and name == "UnpicklingError" and "os.system" in text and not marker.exists()
        sock.close()

        big = _raw_session(home)
        big.sendall(remote._HEADER.pack(remote._MAX_FRAME + 1))
        assert remote._receive(big)[0][0] == "error"
        big.close()

        stuck = _raw_session(home)
        stuck.sendall(remote._HEADER.pack(1000) + b"\x80")  # half a frame, then nothing
        with remote.session(home, timeout=5) as con:
            assert con is not None and con.execute("SELECT 42").fetchone() == (42,)

        before = _open_fds()
        passing = _raw_session(home)
        with open(os.devnull, "rb") as devnull:
            for _ in range(50):
                remote._send(passing, ("execute", "SELECT 1", None), fds=[devnull.fileno()])
                assert remote._receive(passing)[0][0] == "ok"
        passing.close()
        stuck.close()
        until(lambda: _open_fds() <= before, 10, f"the owner kept descriptors: {_open_fds()} open, {before} before")
        with writing(home / "aispendtrack.duckdb") as con:  # the owner serves its own process still
            assert con.execute("SELECT 7").fetchone() == (7,)
    finally:
        owner_module.stop(served)
