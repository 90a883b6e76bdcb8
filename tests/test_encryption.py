"""Encryption at rest, through the real proxy and CLI, checked on the file's raw bytes.

Writing encrypted DuckDB files needs httpfs, which the registry ships for one DuckDB version
(``aispendtrack[encryption]``), the version the project pins: the test venv has it.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from .helpers import free_port, hold_read_only

REPO = Path(__file__).resolve().parent.parent
KEY = "correct horse battery staple 42"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
PYTHON = sys.executable
needs_httpfs = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import duckdb; from addon.core.store.extensions import load; "
                    "load(duckdb.connect(), 'httpfs', 'test')"], cwd=REPO, capture_output=True).returncode != 0,
    reason="DuckDB's httpfs cannot be loaded here: pip install -e '.[encryption]'")


def cli(home: Path, *args: str, key: str | None = KEY, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISPENDTRACK_ENCRYPTION")}
    if key is not None:
        env["AISPENDTRACK_ENCRYPTION_KEY"] = key
    done = subprocess.run([PYTHON, "-m", "cli", "--home", str(home), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@needs_httpfs
def test_the_proxy_writes_an_encrypted_file_and_no_key_means_no_access(tmp_path, upstream):
    home, marker = tmp_path / "home", f"enc-marker-{uuid.uuid4().hex}"
    key = json.loads(cli(home, "keys", "create", "--name", "enc", "--json").stdout)["key"]
    port = free_port()
    env = {**os.environ, "AISPENDTRACK_ENCRYPTION_KEY": KEY}
    process = subprocess.Popen([PYTHON, "-m", "cli", "--home", str(home), "proxy", "--port", str(port),
                                "--openai-upstream", upstream.url, "--flush-ms", "100"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/aispendtrack/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0,
                               default_headers={"x-aispendtrack-key": key, "x-customer-id": marker})
        for _ in range(3):
            client.chat.completions.create(**CHAT)
        deadline = time.monotonic() + 20
        rows = []
        while len(rows) < 3 and time.monotonic() < deadline:
            rows = json.loads(cli(home, "calls", "--format", "json").stdout)
            time.sleep(0.2)
        assert [r["customer_id"] for r in rows] == [marker] * 3
    finally:
        process.terminate()
        process.wait(15)
    assert files_containing(home, marker.encode()) == []
    assert files_containing(home, b"gpt-4o") == []  # nothing of the rows, not only the tag
    refused = cli(home, "calls", key=None, check=False)
    assert refused.returncode == 1 and "is encrypted: set AISPENDTRACK_ENCRYPTION_KEY" in refused.stderr
    assert "Traceback" not in refused.stderr
    wrong = cli(home, "calls", key="x" * 20, check=False)
    assert wrong.returncode == 1 and "is not the key of" in wrong.stderr

    # An erase rewrites the file encrypted too.
    cli(home, "gdpr", "delete", "--customer", marker, "--yes")
    assert json.loads(cli(home, "calls", "--format", "json").stdout) == []
    assert cli(home, "calls", key=None, check=False).returncode == 1


@needs_httpfs
def test_an_existing_database_can_be_encrypted_in_place(tmp_path):
    home, marker = tmp_path / "home", f"plain-{uuid.uuid4().hex}"
    cli(home, "keys", "create", "--name", marker, key=None)
    assert files_containing(home, marker.encode()) != []
    refused = cli(home, "keys", "list", check=False)
    assert "is not encrypted, but an encryption key is set" in refused.stderr
    cli(home, "admin", "encrypt")
    assert files_containing(home, marker.encode()) == []
    assert marker in cli(home, "keys", "list").stdout
    [entry] = [e for e in json.loads(cli(home, "audit", "--json").stdout) if e["action"] == "admin.encrypt"]
    assert (entry["target"], entry["before"], entry["after"]) == ("config:database", {"encrypted": False},
                                                                 {"encrypted": True})


def test_without_httpfs_writing_encrypted_is_refused_with_the_ways_out(tmp_path, monkeypatch):
    import duckdb

    from addon.core.store import encryption, extensions, writing
    # As on a machine without the package and without internet: DuckDB's own directory is empty,
    # no package ships httpfs, and INSTALL cannot reach DuckDB's repository (there is none here).
    monkeypatch.setattr(extensions, "packaged_path", lambda name: None)
    real_connect = duckdb.connect

    def connect_with_empty_extension_dir(*args, **kwargs):
        con = real_connect(*args, **kwargs)
        con.execute(f"SET extension_directory = '{tmp_path / 'no-extensions'}'")
        con.execute("SET custom_extension_repository = 'http://127.0.0.1:9/'")
        return con
    monkeypatch.setattr(duckdb, "connect", connect_with_empty_extension_dir)
    monkeypatch.setenv("AISPENDTRACK_ENCRYPTION_KEY", KEY)
    with pytest.raises(encryption.EncryptionError) as raised:
        with writing(tmp_path / "a.duckdb"):
            pass
    message = str(raised.value)
    assert f"DuckDB {duckdb.__version__}" in message and "aispendtrack[encryption]" in message
    assert "encrypted volume" in message
    assert not (tmp_path / "a.duckdb").exists()  # nothing was written unencrypted instead
    monkeypatch.setenv("AISPENDTRACK_ENCRYPTION_KEY", "short")
    with pytest.raises(encryption.EncryptionError, match="at least 16 characters"):
        encryption.configured_key()


def open_files(pid: int) -> dict[str, bytes]:
    """Every regular file a process has open, named or not (a deleted or nameless temporary file
    too), with its bytes: where an export's spool is while it is being sent."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
                with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
                    found[target] = f.read()
        except OSError:  # closed meanwhile, or not a regular file
            continue
    return found


def new_temporary_files(before: set[str]) -> dict[str, bytes]:
    """Files that appeared directly in the system's temporary directory since ``before``."""
    found = {}
    for name in set(os.listdir(tempfile.gettempdir())) - before:
        path = Path(tempfile.gettempdir(), name)
        try:
            if path.is_file():
                found[str(path)] = path.read_bytes()
        except OSError:  # another program's file, gone meanwhile
            continue
    return found


def _encrypted_home_with_calls(tmp_path: Path, marker: str, monkeypatch) -> tuple[Path, str]:
    """An encrypted data directory with an admin token and 40,000 calls of customer ``marker``
    (megabytes of export: more than a pipe or a socket buffers, so a stalled reader stalls the sender)."""
    from addon.core import home as home_dir
    from addon.core.store import calls as call_rows
    from addon.core.store import writing

    from .helpers import call_row

    home = tmp_path / "home"
    token = json.loads(cli(home, "admin", "create-token", "--json").stdout)["token"]
    monkeypatch.setenv("AISPENDTRACK_ENCRYPTION_KEY", KEY)
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [call_row(n, customer_id=marker, feature=f"{marker}-f") for n in range(40_000)])
    return home, token


def _no_clear_text_while_sending(pid: int, home: Path, marker: bytes, tmp_before: set[str]) -> None:
    spools = open_files(pid)
    for name, data in {**spools, **new_temporary_files(tmp_before)}.items():
        assert marker not in data, f"{name} holds the export in clear"
    assert [name for name in spools if str(home / "spool") in name], "the spool should be in the data directory"
    for name in spools:
        if str(home / "spool") in name:
            fd = next(fd for fd in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{fd}") == name)
            assert os.stat(f"/proc/{pid}/fd/{fd}").st_mode & 0o777 == 0o600
    assert files_containing(home, marker) == []


@needs_httpfs
def test_exports_being_sent_are_sealed_in_the_data_directory_and_a_kill_leaves_nothing(tmp_path, monkeypatch):
    marker = f"spool-marker-{uuid.uuid4().hex}"
    home, token = _encrypted_home_with_calls(tmp_path, marker, monkeypatch)
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    env = {**os.environ, "AISPENDTRACK_ENCRYPTION_KEY": KEY}

    # The CLI, its standard output a pipe that stops being read.
    export = subprocess.Popen([PYTHON, "-m", "cli", "--home", str(home), "export", "--format", "csv"], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = export.stdout.read(1024)
        assert first.startswith(b"id,ts,")
        time.sleep(0.5)
        _no_clear_text_while_sending(export.pid, home, marker.encode(), tmp_before)
        rest = export.stdout.read()
        assert export.wait(30) == 0
    finally:
        export.kill()
    lines = (first + rest).decode().splitlines()
    assert len(lines) == 40_001 and all(marker in line for line in lines[1:])  # the whole export, once

    # The API's export and GDPR export, to a client that stops reading; then the server is killed.
    port = free_port()
    web = subprocess.Popen([PYTHON, "-m", "cli", "--home", str(home), "web", "--port", str(port)], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/login")
        held = []
        for path in ("/api/v1/export?format=csv", f"/api/v1/gdpr/export?customer={marker}"):
            # The 40,000 rows are written whole (sealed) before the first byte: over 30 s at load 9-10.
            sock = socket.create_connection(("127.0.0.1", port), timeout=120)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            held.append(sock)
        time.sleep(0.5)
        _no_clear_text_while_sending(web.pid, home, marker.encode(), tmp_before)
        web.kill()
        web.wait(10)
    finally:
        web.kill()
    assert list((home / "spool").iterdir()) == []
    assert [name for name, data in new_temporary_files(tmp_before).items() if marker.encode() in data] == []

    # Where a file system cannot make nameless files, a crash can leave a named spool: the next start removes it.
    leftover = home / "spool" / "export-k1lled"
    leftover.write_bytes(b"sealed bytes")
    from web import create_app
    create_app(home)
    assert not leftover.exists()


def wait_until_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)



@needs_httpfs
def test_spill_files_of_an_encrypted_store_are_sealed_and_replay_every_row_once(tmp_path, monkeypatch):
    from decimal import Decimal

    from addon.core import gdpr
    from addon.core.store import calls as call_rows
    from addon.core.store import reading
    from addon.core.store.subjects import Subject
    from addon.writer import QUARANTINE_DIR, Writer

    from .helpers import call_row

    monkeypatch.setenv("AISPENDTRACK_ENCRYPTION_KEY", KEY)
    marker, other = f"spill-marker-{uuid.uuid4().hex}", f"other-{uuid.uuid4().hex}"
    home = tmp_path / "home"
    db, spill = home / "aispendtrack.duckdb", home / "spill"
    home.mkdir()
    writer = Writer(db, spill, build_row=lambda row: row, on_refresh=lambda con: None,
                    spill_after_rows=5, spill_after_seconds=3600)
    writer.load_keys_now()
    holder = hold_read_only(db, 60, KEY)
    try:
        for n in range(12):
            writer.submit(call_row(n, customer_id=marker if n % 2 == 0 else other))
            writer.cycle(lock_timeout=0.05)
        spilled = sorted(spill.glob("*.jsonl"))
        assert len(spilled) == 2  # 5 rows each; the last two still queued
        assert all(path.stat().st_mode & 0o777 == 0o600 for path in spilled)
    finally:
        holder.kill()
        holder.wait()
    assert files_containing(home, marker.encode()) == [] and files_containing(home, other.encode()) == []
    with io.StringIO() as out:  # GDPR requests read them, and rewrite them sealed
        counts = gdpr.export(db, spill, Subject("customer", marker), out)
        assert counts["pending_calls"] == 5 and counts["unreadable_spill_files"] == 0
    assert gdpr.erase(db, spill, Subject("customer", other))["pending_calls"] == 5
    assert files_containing(home, marker.encode()) == []
    saved = {path.name: path.read_bytes() for path in spill.glob("*.jsonl")}
    writer.submit(call_row(99, customer_id=marker, cost_usd=Decimal(10) ** 30))  # quarantined: no DECIMAL holds it
    writer.stop()
    with reading(db) as con:
        stored = call_rows.newest(con, 100)
    # 11, queued in memory while its customer was erased, is dropped as it lands (subjects.without_erased).
    assert sorted(r["input_tokens"] for r in stored) == [0, 2, 4, 6, 8, 10]
    assert len(list((spill / QUARANTINE_DIR).glob("*.jsonl"))) == 1
    assert files_containing(home, marker.encode()) == []
    # A crash after the insert, before the spill files were removed: the replay stores nothing twice.
    for name, data in saved.items():
        (spill / name).write_bytes(data)
    Writer(db, spill, build_row=lambda row: row, on_refresh=lambda con: None).cycle(lock_timeout=5)
    with reading(db) as con:
        assert sorted(r["input_tokens"] for r in call_rows.newest(con, 100)) == [0, 2, 4, 6, 8, 10]
    assert list(spill.glob("*.jsonl")) == []


@needs_httpfs
def test_a_spill_file_sealed_with_another_key_is_set_aside_with_a_reason_not_lost_or_retried(tmp_path, monkeypatch,
                                                                                              caplog):
    from addon.core import spill as spill_files
    from addon.writer import QUARANTINE_DIR, Writer

    from .helpers import call_row

    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setenv("AISPENDTRACK_ENCRYPTION_KEY", "the key of last year, 16+")
    spill_files.write(spill / "1-1-1.jsonl", [call_row(1)])
    monkeypatch.setenv("AISPENDTRACK_ENCRYPTION_KEY", KEY)
    writer = Writer(tmp_path / "a.duckdb", spill, build_row=lambda row: row, on_refresh=lambda con: None)
    writer.cycle(lock_timeout=5, force_keys=True)
    writer.cycle(lock_timeout=5, force_keys=True)
    assert list(spill.glob("*.jsonl")) == [] and (spill / QUARANTINE_DIR / "1-1-1.jsonl").exists()
    assert caplog.text.count("does not open with the key in AISPENDTRACK_ENCRYPTION_KEY") == 1
