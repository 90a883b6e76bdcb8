"""Finding 1 of the hardening issue: one implausible usage value must never stop recording.

An upstream that reports ``completion_tokens: 10000000000000`` (or "12", null, -5) gets its call
recorded as ``invalid`` with no cost; the next honest call is stored as promptly as the hostile ones
were, and a revoke still applies within 5 s, before and after a restart. A row the table refuses for any other reason is
set aside in quarantine, never retried, and never blocks the rows beside it.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from addon.core import spill
from addon.core.store import calls as call_rows
from addon.core.store import reading, writing
from addon.providers.base import InvalidUsage, count
from addon.writer import QUARANTINE_DIR, Writer

from .helpers import call_row, run_cli, start_proxy, until_key_works, until_refused

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
HOSTILE = [
    ({"prompt_tokens": 10, "completion_tokens": 10_000_000_000_000}, "completion_tokens=10000000000000"),
    ({"prompt_tokens": "12", "completion_tokens": 1}, "prompt_tokens='12'"),
    ({"prompt_tokens": None, "completion_tokens": 1}, "prompt_tokens is null"),
    ({"prompt_tokens": -5, "completion_tokens": 1}, "prompt_tokens=-5"),
    ({"prompt_tokens": 10, "completion_tokens": 2.5}, "completion_tokens=2.5"),
]


@pytest.mark.parametrize("value", ["12", True, -5, 2.5, float("nan"), 100_000_001, [1]])
def test_a_count_that_is_not_a_plausible_whole_number_is_refused_by_name(value):
    with pytest.raises(InvalidUsage, match="completion_tokens"):
        count({"completion_tokens": value}, "completion_tokens")


def test_plausible_counts_pass_and_absent_ones_are_zero():
    assert count({"a": 12.0}, "a") == 12
    assert count({"a": 100_000_000}, "a") == 100_000_000
    assert count({}, "a") == 0 and count({"a": None}, "a") == 0
    with pytest.raises(InvalidUsage, match="a is null"):
        count({"a": None}, "a", required=True)


@pytest.fixture
def hostile_proxy(tmp_path, upstream):
    home = tmp_path / "home"
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log")
    yield proxy
    proxy.stop()


def _call(proxy, customer: str, usage: dict | None = None, stream: bool = False):
    extra = {"test_usage": usage} if usage is not None else {}
    client = proxy.openai(headers={"x-customer-id": customer})
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            **CHAT, stream=True, stream_options={"include_usage": True}, extra_body=extra) if c.choices)
    return client.chat.completions.create(**CHAT, extra_body=extra)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_implausible_usage_is_recorded_as_invalid_and_the_next_call_still_counts(hostile_proxy, stream):
    run_cli(hostile_proxy.home, "budgets", "set", "--scope", "all", "--daily", "1", "--block")
    round_trips = []
    for n, (usage, named) in enumerate(HOSTILE):
        started = time.monotonic()
        _call(hostile_proxy, f"hostile-{n}", usage, stream)  # the client gets the upstream's answer as sent
        [row] = hostile_proxy.rows(f"hostile-{n}")
        round_trips.append(time.monotonic() - started)
        assert row["usage_source"] == "invalid" and row["cost_usd"] is None and row["priced"] is False
        assert row["error"].startswith("usage implausible: ") and named in row["error"], row["error"]
        assert row["output_tokens"] == 0
    started = time.monotonic()
    _call(hostile_proxy, "honest", stream=stream)  # the $1 blocking budget was not tripped by $100M
    [honest] = hostile_proxy.rows("honest")
    # Stored as promptly as each hostile call was (call to row), on this machine now: the writer was
    # not left stuck or retrying by what it refused.
    assert time.monotonic() - started < 1 + 2 * max(round_trips), (time.monotonic() - started, round_trips)
    assert honest["usage_source"] == "reported" and Decimal(str(honest["cost_usd"])) > 0
    report = json.loads(run_cli(hostile_proxy.home, "report", "--format", "json"))
    assert Decimal(str(report[0]["cost_usd"])) < 1


def test_after_hostile_usage_a_revoke_applies_within_5_s_before_and_after_a_restart(hostile_proxy, tmp_path,
                                                                                     upstream):
    def revoked_within_5s(proxy) -> None:
        created = json.loads(run_cli(proxy.home, "keys", "create", "--name", "victim", "--json"))
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0,
                               default_headers={"x-aispendtrack-key": created["key"]})
        until_key_works(lambda: client.chat.completions.create(**CHAT), 5, "a new key was not accepted within 5 s")
        run_cli(proxy.home, "keys", "revoke", str(created["id"]))
        until_refused(lambda: client.chat.completions.create(**CHAT), 5, "a revoked key still worked after 5 s")

    _call(hostile_proxy, "hostile", HOSTILE[0][0])
    revoked_within_5s(hostile_proxy)
    hostile_proxy.stop()
    again = start_proxy(hostile_proxy.home, upstream.url, tmp_path / "again.log", key=hostile_proxy.key)
    try:
        revoked_within_5s(again)
        _call(again, "after-restart")
        assert again.rows("after-restart")
        assert "Traceback" not in (tmp_path / "again.log").read_text()
    finally:
        again.stop()


def test_a_row_the_table_refuses_is_quarantined_and_the_batch_beside_it_is_stored(tmp_path, caplog):
    db, spill = tmp_path / "a.duckdb", tmp_path / "spill"
    refreshed = []
    writer = Writer(db, spill, build_row=lambda row: row, on_refresh=refreshed.append)
    writer.load_keys_now()
    poison = call_row(99, cost_usd=Decimal(10) ** 30, customer_id="secret-customer")  # no DECIMAL holds it
    for row in [call_row(1), poison, call_row(2)]:
        writer.submit(row)
    writer.cycle(lock_timeout=1, force_keys=True)
    with reading(db) as con:
        assert sorted(r["input_tokens"] for r in call_rows.newest(con, 10)) == [1, 2]
    assert len(refreshed) == 2  # the key refresh ran in the same cycle
    [quarantined] = (spill / QUARANTINE_DIR).glob("*.jsonl")
    kept = json.loads(quarantined.read_text())
    assert kept["id"] == str(poison["id"]) and "ConversionException" in kept["quarantine_reason"]
    assert oct(quarantined.stat().st_mode & 0o777) == "0o600"
    assert str(poison["id"]) in caplog.text and "secret-customer" not in caplog.text
    # Nothing is retried: the next cycles and a new writer (a restart) store the next rows at once.
    writer.submit(call_row(3))
    writer.cycle(lock_timeout=1)
    Writer(db, spill, build_row=lambda row: row, on_refresh=lambda con: None).cycle(lock_timeout=1)
    with reading(db) as con:
        assert sorted(r["input_tokens"] for r in call_rows.newest(con, 10)) == [1, 2, 3]


def test_a_spill_file_with_a_poison_row_is_replayed_without_it(tmp_path):
    db, spill = tmp_path / "a.duckdb", tmp_path / "spill"
    writer = Writer(db, spill, build_row=lambda row: row, on_refresh=lambda con: None)
    writer.load_keys_now()
    spill.mkdir()
    rows = [call_row(1), call_row(2, output_tokens="lots"), call_row(3)]
    (spill / "1-1-1.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    writer.cycle(lock_timeout=1)
    with reading(db) as con:
        assert sorted(r["input_tokens"] for r in call_rows.newest(con, 10)) == [1, 3]
    assert not list(spill.glob("*.jsonl"))
    assert len(list((spill / QUARANTINE_DIR).glob("*.jsonl"))) == 1


def test_a_spill_file_that_cannot_be_removed_holds_up_no_new_row(tmp_path, monkeypatch, caplog):
    """A spill file stored but not removable (an immutable directory, a permission changed): the
    unlink's error ended the cycle before the rows in memory were stored, every cycle, and the log
    blamed the database. It is said once, as what it is, and the new rows are stored."""
    db, spill_dir = tmp_path / "a.duckdb", tmp_path / "spill"
    writer = Writer(db, spill_dir, build_row=lambda row: row, on_refresh=lambda con: None)
    writer.load_keys_now()
    spill_dir.mkdir()
    stuck = spill_dir / "1-1-1.jsonl"
    spill.write(stuck, [call_row(1)])
    real_unlink = Path.unlink

    def refused(path, missing_ok=False):
        if path == stuck:
            raise PermissionError(1, "Operation not permitted", str(path))
        real_unlink(path, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", refused)
    for n in (2, 3, 4):
        writer.submit(call_row(n))
        writer.cycle(lock_timeout=1)
    with reading(db) as con:
        assert sorted(r["input_tokens"] for r in call_rows.newest(con, 10)) == [1, 2, 3, 4]
    assert caplog.text.count(f"cannot remove it ([Errno 1] Operation not permitted: '{stuck}')") == 1
    assert "cannot write" not in caplog.text


def test_a_spill_the_full_disk_refused_leaves_no_partial_file(tmp_path, monkeypatch):
    """A spill that failed part way left its .partial file, holding the space a full disk had just
    freed; nothing ever removed it."""
    writer = Writer(tmp_path / "a.duckdb", tmp_path / "spill", build_row=lambda row: row,
                    on_refresh=lambda con: None)
    writer.submit(call_row(1))
    writer._drain()

    def half_written(path, rows):
        path.write_bytes(b'{"half": ')
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(spill, "write", half_written)
    writer._spill(force=True)
    assert list((tmp_path / "spill").iterdir()) == [] and len(writer._pending) == 1


def test_a_refresh_failing_every_cycle_is_logged_once_not_a_traceback_a_second(tmp_path, caplog):
    def failing(con):
        raise RuntimeError("the disk is full")
    with writing(tmp_path / "a.duckdb"):
        pass  # the store made, as a proxy's start makes it
    writer = Writer(tmp_path / "a.duckdb", tmp_path / "spill", build_row=lambda row: row, on_refresh=failing)
    for n in range(5):
        writer.submit(call_row(n))
        writer.cycle(lock_timeout=1, force_keys=True)
    assert caplog.text.count("could not refresh keys, limits and budgets") == 1
    with reading(tmp_path / "a.duckdb") as con:
        assert len(call_rows.newest(con, 10)) == 5  # the rows are written all the same
