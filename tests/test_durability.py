"""Calls under load when the proxy is stopped, killed, or its disk fills up or turns read-only."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from .helpers import Load, run_cli, scrape, slowest_write, start_proxy


def stored_tags(home: Path) -> list[str]:
    import json
    rows = json.loads(run_cli(home, "calls", "--limit", "1000000", "--format", "json"))
    return [r["customer_id"] for r in rows if r["customer_id"]]


def test_sigterm_under_load_keeps_every_completed_call(tmp_path, upstream):
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log", flush_ms=1000)
    with Load(proxy) as load:
        load.wait_for(200)
        proxy.process.send_signal(signal.SIGTERM)
        proxy.process.wait(30)
    assert proxy.process.returncode == 0
    stored = stored_tags(proxy.home)
    assert len(stored) == len(set(stored))  # each call once
    assert set(load.completed) <= set(stored)


def test_kill_9_under_load_loses_at_most_the_last_flush_interval(tmp_path, upstream):
    flush_s = 0.5
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log", flush_ms=int(flush_s * 1000),
                        metrics=True)
    try:
        with Load(proxy) as load:
            load.wait_for(300)
            # Killed once 200 calls are well past the bound below, so it has calls it must not lose:
            # a fast machine completes 300 calls within one flush interval.
            settled = flush_s + 2 * slowest_write(scrape(proxy.metrics_url)) + 1.0
            deadline = time.monotonic() + 30
            while sum(time.monotonic() - at > settled for at in list(load.completed.values())) < 200:
                assert time.monotonic() < deadline, "the load stalled"
                time.sleep(0.05)
            writes = slowest_write(scrape(proxy.metrics_url))
            killed_at = time.monotonic()
            proxy.process.kill()
    finally:
        proxy.process.kill()  # a failure before the kill left the proxy running for the rest of the suite
        proxy.process.wait(10)
    stored = set(stored_tags(proxy.home))
    missing = {tag: killed_at - at for tag, at in load.completed.items() if tag not in stored}
    # The bound: a call that ended just after a cycle took the queue waits one interval for the next
    # cycle, and is stored when that one commits. So at most one interval and two writes (the one it
    # missed and the one the kill cut), as slow as this machine writes now (its own metrics say).
    bound = flush_s + 2 * writes + 0.05
    assert all(age <= bound for age in missing.values()), (bound, sorted(missing.values())[-5:])
    assert len(load.completed) - len(missing) >= 200
    # A restart after the kill neither loses nor duplicates what was stored.
    restarted = start_proxy(proxy.home, upstream.url, tmp_path / "proxy2.log", key=proxy.key)
    restarted.stop()
    again = stored_tags(proxy.home)
    assert len(again) == len(set(again)) and set(again) == stored


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs for the data directory, so the test can fill it up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs privileges this machine does not give")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_calls_flow_while_the_disk_is_full_and_every_row_lands_afterwards(small_disk, tmp_path, upstream):
    # A read-only file system takes the same path (a write the file system refuses), but since the
    # proxy holds its file open (store/owner.py) a remount to read-only is refused while it runs
    # (EBUSY); only the kernel's emergency remount after a disk error gets there.
    home = small_disk / "home"
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", flush_ms=200)
    try:
        filler = small_disk / "filler"
        with open(filler, "wb") as f:  # fill every free byte
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        with Load(proxy, threads=4) as load:
            load.wait_for(100)
        assert load.failed == 0  # the callers never noticed
        time.sleep(1)  # several failed flushes
        assert not set(load.completed) & set(stored_tags(home))
        filler.unlink()
        deadline = time.monotonic() + 15
        while not set(load.completed) <= set(stored_tags(home)) and time.monotonic() < deadline:
            time.sleep(0.2)
        stored = stored_tags(home)
        assert set(load.completed) <= set(stored) and len(stored) == len(set(stored))
    finally:
        proxy.stop()
    log = proxy.log_path.read_text()
    assert "cannot write" in log and proxy.process.returncode == 0


def _fill(disk: Path, leave_kib: int = 0) -> Path:
    """Every free byte of ``disk`` taken, but ``leave_kib``; the file that takes them."""
    filler = disk / "filler"
    room = int(subprocess.run(["df", "-k", "--output=avail", str(disk)], capture_output=True, text=True
                              ).stdout.split()[-1])
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * max(0, (room - leave_kib) * 1024))
            f.flush()
        except OSError:
            pass
    return filler


def test_a_checkpoint_that_fails_on_a_full_disk_is_recovered_from_without_a_restart(small_disk, tmp_path, upstream):
    """DuckDB invalidates a connection whose checkpoint fails part way (the disk full as its WAL
    passed the threshold) and asks for it to be opened again. The proxy kept it: every write
    failed until a restart (rows only spilled), the CLI printed a traceback, the page a 500."""
    from addon.core.store import remote
    home = small_disk / "home"
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", flush_ms=200)
    try:
        with Load(proxy, threads=2) as load:
            load.wait_for(20)
        with remote.session(home, 10) as con:  # as a WAL of 16 MB would reach it, on a small disk
            con.execute("SET checkpoint_threshold = '300KB'")
        filler = _fill(small_disk, leave_kib=400)  # room for the WAL's appends, not for a checkpoint
        with Load(proxy, threads=2) as during:
            during.wait_for(300)
        filler.unlink()
        with Load(proxy, threads=1) as after:
            after.wait_for(20)
        assert load.failed == during.failed == after.failed == 0  # the callers never noticed
        wanted = set(load.completed) | set(during.completed) | set(after.completed)
        deadline = time.monotonic() + 20
        while not wanted <= set(stored_tags(home)) and time.monotonic() < deadline:
            time.sleep(0.3)
        stored = stored_tags(home)  # by the CLI, through the proxy that owns the file: no restart
        assert wanted <= set(stored) and len(stored) == len(set(stored))
    finally:
        proxy.stop()
    log = proxy.log_path.read_text()
    assert "opened" in log and "again after a write failed" in log, log[-3000:]


def test_a_stop_while_the_disk_is_full_leaves_the_rows_where_a_person_can_store_them(small_disk, tmp_path, upstream):
    """SIGTERM with the data directory's disk full: the rows neither the database nor the spill
    directory took were lost, the exit as if all went well, the log naming no loss."""
    home = small_disk / "home"
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", flush_ms=200)
    try:
        filler = _fill(small_disk)
        with Load(proxy, threads=2) as load:
            load.wait_for(50)
    finally:
        proxy.stop()
    log = proxy.log_path.read_text()
    [aside] = re.findall(r"they are in (\S+aispendtrack-unwritten-\S+\.jsonl);", log)
    filler.unlink()
    spill_dir = home / "spill"
    spill_dir.mkdir(exist_ok=True)
    shutil.move(aside, spill_dir / Path(aside).name)  # as the log says to
    restarted = start_proxy(home, upstream.url, tmp_path / "proxy2.log", key=proxy.key)
    restarted.stop()
    stored = stored_tags(home)
    assert set(load.completed) <= set(stored) and len(stored) == len(set(stored))


def test_a_backup_taken_under_load_restores_the_calls_before_it_and_the_keys(tmp_path, upstream, monkeypatch):
    """docs/operations.md, "Backup and restore": `admin backup` while calls flow, then a new data
    directory with the backup as its database. Given as a relative path, from another directory
    than the proxy's (whose process writes the copy: it wrote one into its own directory, then the
    command failed); after a copy that failed, which left its database attached in the proxy and
    refused every later backup until a restart."""
    from click.testing import CliRunner

    from addon.core.store import compact, reading
    from cli.main import cli
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log", flush_ms=500)
    with Load(proxy, threads=4) as load:
        load.wait_for(60)
        before = set(load.completed)
        assert before <= proxy.until_stored(before)  # stored before the backup begins
        clashing = tmp_path / "clashing.duckdb"  # a database already holding tables: the copy fails half-way
        duckdb.connect(str(clashing)).execute("CREATE TABLE calls (id INTEGER)").close()
        with pytest.raises(duckdb.Error), reading(proxy.home / "aispendtrack.duckdb") as con:
            compact.backup(con, clashing)
        missing = CliRunner().invoke(cli, ["--home", str(proxy.home), "admin", "backup", str(tmp_path / "no/b.db")])
        assert missing.exit_code == 1 and f"{tmp_path / 'no'} is not a directory; create it first." in missing.output
        monkeypatch.chdir(elsewhere)
        run_cli(proxy.home, "admin", "backup", "backup.duckdb")
        load.wait_for(len(load.completed) + 30)  # and the proxy goes on
    backup = elsewhere / "backup.duckdb"
    proxy_dir = Path(f"/proc/{proxy.process.pid}/cwd").resolve()
    assert backup.exists() and proxy_dir != elsewhere and not (proxy_dir / "backup.duckdb").exists()
    proxy.stop()
    assert load.failed == 0
    stored = stored_tags(proxy.home)
    assert set(load.completed) <= set(stored)  # the backup took nothing from the running proxy

    restored = tmp_path / "restored"
    restored.mkdir()
    backup.rename(restored / "aispendtrack.duckdb")
    in_backup = stored_tags(restored)
    assert len(before) >= 60 and before <= set(in_backup) <= set(stored)
    assert len(in_backup) == len(set(in_backup))
    again = start_proxy(restored, upstream.url, tmp_path / "restored.log", key=proxy.key)  # the same key works
    try:
        again.openai().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                               extra_headers={"x-customer-id": "after-restore"})
        assert len(again.rows("after-restore")) == 1
    finally:
        again.stop()


def test_a_backup_never_overwrites_and_the_shared_mode_is_sent_to_its_own_tools(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli.main import cli
    run_cli(tmp_path / "home", "keys", "create", "--name", "a")
    existing = tmp_path / "existing.duckdb"
    existing.write_bytes(b"someone's file")
    refused = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "admin", "backup", str(existing)])
    assert refused.exit_code == 1 and "exists; name a new file" in refused.output
    assert existing.read_bytes() == b"someone's file"
    # Something makes the target while the copy runs: it stays as that made it, and no copy is left.
    from addon.core.store import compact
    copy = compact.backup
    racing = tmp_path / "racing.duckdb"

    def meanwhile(con, target):
        size = copy(con, target)
        racing.write_bytes(b"another's file")
        return size
    monkeypatch.setattr(compact, "backup", meanwhile)
    raced = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "admin", "backup", str(racing)])
    assert raced.exit_code == 1 and "was made by something else meanwhile; name a new file" in raced.output
    assert racing.read_bytes() == b"another's file" and sorted(p.name for p in tmp_path.iterdir()) == [
        "existing.duckdb", "home", "racing.duckdb"]
    monkeypatch.setattr(compact, "backup", copy)
    monkeypatch.setenv("AISPENDTRACK_CATALOG", "postgresql://nobody@127.0.0.1:1/none")
    shared = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "admin", "backup", str(tmp_path / "b")])
    assert shared.exit_code == 1 and "pg_dump" in shared.output and not (tmp_path / "b").exists()


def test_sigterm_lets_a_call_in_flight_finish_and_takes_no_new_connection(tmp_path, upstream):
    """Probe: a stop cut every call in flight at once: the client got a reset, and the row an estimate
    ($0.00002) of a call the provider went on to bill ($0.00075). Now the proxy stops accepting,
    gives the calls in flight up to --drain-s, then stops."""
    import httpx

    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log", extra_args=("--drain-s", "20"))
    client = proxy.openai(headers={"x-test-scenario": "paced", "x-customer-id": "drained"})  # ~7 s of events
    stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = [next(iter(stream))]  # under way: its events come every 0.5 s
    stopped_at = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    try:
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{proxy.url}/aispendtrack/health", timeout=5)
        chunks += list(stream)
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0  # the whole answer
        assert proxy.process.wait(30) == 0 and time.monotonic() - stopped_at < 15  # once the call ended
    finally:
        proxy.stop()
    assert "waiting up to 20 s for 1 calls under way" in (tmp_path / "proxy.log").read_text()  # counted once
    [row] = [r for r in json.loads(run_cli(proxy.home, "calls", "--format", "json")) if r["customer_id"] == "drained"]
    assert (row["outcome"], row["usage_source"], row["priced"]) == ("completed", "reported", True)


def _raw_request(proxy, scenario: str, customer: str) -> socket.socket:
    """A chat call sent on a plain socket (read as slowly as the test likes), keep-alive."""
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                 b"authorization: Bearer sk-test\r\n" + f"x-aispendtrack-key: {proxy.key}\r\n"
                 f"x-customer-id: {customer}\r\nx-test-scenario: {scenario}\r\n"
                 f"content-length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def _read_answer(sock: socket.socket, pace: float = 0.0) -> tuple[bytes, bytes]:
    """(head, body) of one HTTP/1.1 answer with a content-length, read 64 KiB at a time, ``pace`` s apart."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b""
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
        time.sleep(pace)
    return head, body


def test_sigterm_waits_until_a_slow_reader_has_the_whole_answer(tmp_path, upstream):
    """mitmproxy runs the response hook before it writes the body: a stop counted an 8 MiB answer as
    done while most of it waited for a slow client, which got 5.7 of 8.4 MB and a reset, and the row
    said completed. The drain now waits until the answer is handed to the kernel."""
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log", extra_args=("--drain-s", "30"))
    try:
        sock = _raw_request(proxy, "big_json:8", "slow-reader")
        sock.recv(1, socket.MSG_PEEK)  # the answer has begun to come
        proxy.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        _, body = _read_answer(sock, pace=0.02)  # ~3 MB/s
        assert proxy.process.wait(30) == 0
    finally:
        proxy.stop()
    answer = json.loads(body)
    assert len(answer["choices"][0]["message"]["content"]) == 8 * 1024 * 1024
    [row] = [r for r in json.loads(run_cli(proxy.home, "calls", "--format", "json"))
             if r["customer_id"] == "slow-reader"]
    assert (row["outcome"], row["usage_source"], row["priced"]) == ("completed", "reported", True)


def test_a_request_begun_on_a_kept_connection_while_stopping_gets_a_503_and_is_not_forwarded(tmp_path, upstream):
    """During the drain, a client on a connection kept alive went on sending calls: each was forwarded
    (billed), then cut at the drain's end. Now answered 503 (retry elsewhere), the connection closed."""
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log", extra_args=("--drain-s", "20"))
    try:
        kept = _raw_request(proxy, "", "kept-alive")
        head, _ = _read_answer(kept)
        assert head.startswith(b"HTTP/1.1 200")
        stream = proxy.openai(headers={"x-test-scenario": "paced", "x-customer-id": "holding"}).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
        next(iter(stream))  # under way for ~7 s: the drain waits for it
        proxy.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        forwarded = len(upstream.received)
        kept.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     + f"x-aispendtrack-key: {proxy.key}\r\nx-customer-id: after-stop\r\ncontent-length: 2\r\n"
                       f"\r\n{{}}".encode())
        head, body = _read_answer(kept)
        assert head.startswith(b"HTTP/1.1 503") and b"connection: close" in head.lower()
        assert json.loads(body)["error"]["code"] == "aispendtrack_stopping"
        assert kept.recv(1) == b""  # closed
        assert len(upstream.received) == forwarded  # never reached the provider
        list(stream)
        assert proxy.process.wait(30) == 0
    finally:
        proxy.stop()
    stored = {r["customer_id"] for r in json.loads(run_cli(proxy.home, "calls", "--format", "json"))}
    assert stored == {"kept-alive", "holding"}
