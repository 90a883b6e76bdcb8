"""Encryption at rest, through the real proxy and CLI, checked on the file's raw bytes.

Writing encrypted DuckDB files needs httpfs, which the registry ships for one DuckDB version
(``aispendtrack[encryption]``), the version the project pins: the test venv has it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from .helpers import free_port

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
        deadline = time.monotonic() + 10
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
