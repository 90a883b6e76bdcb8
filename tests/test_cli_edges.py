"""Rough edges a new user hit: each answered with a clear message, no traceback, nothing half-done."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from decimal import Decimal

import pytest
from click.testing import CliRunner

from addon.core.money import usd
from cli.main import cli

from .helpers import call_row, free_port, run_cli


def _invoke(home, *args: str):
    return CliRunner().invoke(cli, ["--home", str(home), *args])


@pytest.fixture
def taken_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.mark.parametrize("command,flag", [("proxy", "--port"), ("web", "--port"), ("proxy", "--web-port"),
                                          ("proxy", "--metrics-port")])
def test_a_port_in_use_is_named_before_anything_is_printed_or_created(tmp_path, taken_port, command, flag):
    args = [command, flag, str(taken_port)] if flag in ("--port",) else [command, "--port", "0", flag,
                                                                            str(taken_port)]
    result = _invoke(tmp_path, *args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot listen on 127.0.0.1:{taken_port}" in result.output and f"with {flag} PORT" in result.output
    assert "proxy on" not in result.output and "Web and API on" not in result.output
    assert json.loads(run_cli(tmp_path, "keys", "list", "--json")) == []  # no key was created


@pytest.mark.parametrize("first,second", [("--port", "--metrics-port"), ("--web-port", "--metrics-port"),
                                           ("--port", "--forward-port")])
def test_one_port_given_to_two_servers_is_refused_before_either_starts(tmp_path, first, second):
    port = str(free_port())
    args = ["proxy", first, port, second, port] + ([] if "--port" in (first, second) else ["--port", "0"])
    result = _invoke(tmp_path, *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{first} and {second} are both {port}; each server needs a port of its own." in result.output
    assert json.loads(run_cli(tmp_path, "keys", "list", "--json")) == []


@pytest.mark.parametrize("args", [("export", "--out", "/no/such/dir/x.csv"),
                                  ("gdpr", "export", "--customer", "acme", "--out", "/no/such/dir/x.json")])
def test_an_out_file_in_a_missing_directory_is_refused_up_front(tmp_path, args):
    result = _invoke(tmp_path, *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "the directory /no/such/dir does not exist; create it first." in result.output


_WRITES = [("export", "--format", "csv"), ("export", "--format", "parquet"),
           ("gdpr", "export", "--customer", "acme")]


def _full_disk_refused(result, target: str) -> None:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"could not write {target}: " in result.output and "What was written is incomplete." in result.output
    assert "Wrote" not in result.output


@pytest.mark.parametrize("args", _WRITES)
def test_an_export_to_a_full_disk_fails_with_one_line(tmp_path, args):
    run_cli(tmp_path, "keys", "create", "--name", "a")  # a store to read
    _full_disk_refused(_invoke(tmp_path, *args, "--out", "/dev/full"), "/dev/full")


@pytest.mark.parametrize("args", [_WRITES[0], _WRITES[2]])
def test_an_export_to_a_full_standard_output_fails_with_one_line(tmp_path, args):
    run_cli(tmp_path, "keys", "create", "--name", "a")
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "cli", "--home", str(tmp_path), *args], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "could not write to standard output: No space left on device." in done.stderr


@pytest.mark.parametrize("args", [_WRITES[0], _WRITES[1]])
def test_an_export_through_a_running_proxy_to_a_full_disk_fails(proxy, args):
    """With the proxy up, its process writes the file's bytes into a pipe that this one copies to
    the file: a copy that failed reported the export written before."""
    _full_disk_refused(_invoke(proxy.home, *args, "--out", "/dev/full"), "/dev/full")


@pytest.mark.parametrize("args", [("report",), ("export", "--out", "out.csv"),
                                  ("gdpr", "export", "--customer", "acme", "--out", "out.json")])
def test_a_database_file_that_is_not_duckdbs_is_named_not_blamed_on_the_output(tmp_path, args):
    (tmp_path / "aispendtrack.duckdb").write_bytes(b"not a database\n" * 100)
    args = tuple(str(tmp_path / a) if a.startswith("out.") else a for a in args)
    result = _invoke(tmp_path, *args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{tmp_path / 'aispendtrack.duckdb'} is not a DuckDB database file" in result.output
    assert "could not write" not in result.output


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_database_file_is_named_with_what_to_do_not_a_traceback(tmp_path, damage):
    """A file cut short or with bytes flipped inside (a disk error, a copy taken while written):
    only a damaged header was named; every other damage gave DuckDB's traceback from every command."""
    from addon.core.store import calls as call_rows
    from addon.core.store import writing
    db = tmp_path / "aispendtrack.duckdb"
    with writing(db) as con:
        call_rows.insert(con, [call_row(n) for n in range(2000)])
    data = bytearray(db.read_bytes())
    if damage == "truncated":
        data = data[:len(data) // 2]
    else:
        for at in range(4096 * 3, len(data), 4096 * 7):  # inside blocks past the headers: checksums fail
            data[at + 100:at + 164] = bytes(64)
    db.write_bytes(bytes(data))
    for args in (("calls",), ("report",)):
        result = _invoke(tmp_path, *args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert str(db) in result.output and "restore it from a backup" in result.output, result.output


def test_a_database_failing_under_a_command_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    """A block that fails its checksum, a disk full mid-query, a connection DuckDB gave up on: the
    command printed DuckDB's traceback."""
    import duckdb

    from addon.core.store import calls as call_rows
    from addon.core.store import writing
    with writing(tmp_path / "aispendtrack.duckdb") as con:
        call_rows.insert(con, [call_row(1)])

    def failing(*args, **kwargs):
        raise duckdb.IOException('IO Error: Could not read enough bytes from file "aispendtrack.duckdb"')
    from addon.core.store import reports as report_rows
    monkeypatch.setattr(report_rows, "calls_page", failing)
    result = _invoke(tmp_path, "calls")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "the database failed: IOException: IO Error: Could not read enough bytes" in result.output


def test_a_gdpr_export_with_nothing_stored_says_so(tmp_path):
    out = tmp_path / "acme.json"
    result = _invoke(tmp_path, "gdpr", "export", "--customer", "nobody", "--out", str(out))
    assert result.exit_code == 0 and "Nothing is stored about customer nobody." in result.output
    assert json.loads(out.read_text())["subject"] == {"customer": "nobody"}


def test_a_gdpr_delete_of_a_subject_never_stored_says_so(tmp_path):
    result = _invoke(tmp_path, "gdpr", "delete", "--customer", "Acme", "--yes")
    assert result.exit_code == 0 and "Erased" not in result.output, result.output
    assert result.output.startswith("Nothing was stored about customer Acme (ids match exactly, case included). "
                                    "Database rewritten")


def test_revoking_a_revoked_key_says_so_and_fails(tmp_path):
    key_id = json.loads(run_cli(tmp_path, "keys", "create", "--name", "old", "--json"))["id"]
    first = run_cli(tmp_path, "keys", "revoke", str(key_id))
    assert first.startswith(f"Revoked key {key_id} (at ")
    again = _invoke(tmp_path, "keys", "revoke", str(key_id))
    at = first.removeprefix(f"Revoked key {key_id} ").removesuffix(".\n")  # "(at 2026-12-03 16:40:00 UTC)"
    assert again.exit_code == 1 and f"Key {key_id} was already revoked {at}; nothing changed." in again.output


@pytest.mark.parametrize("amount,text", [(Decimal("0.005"), "$0.005"), (Decimal("0.0012"), "$0.0012"),
                                         (Decimal("1234.5"), "$1,234.50"), (Decimal("0.00001"), "$0.00001"),
                                         (Decimal("0.05175"), "$0.05175"), (Decimal("0.0000004"), "<$0.000001"),
                                         (0, "$0.00"), (None, "unpriced"), (0.25, "$0.25")])
def test_small_amounts_keep_their_digits(amount, text):
    assert usd(amount) == text  # a $0.005 budget was announced as "$0.00"


def test_alerts_with_nothing_sent_and_no_channels_says_what_to_do(tmp_path):
    result = _invoke(tmp_path, "alerts")
    assert result.exit_code == 0 and "No alerts sent yet. No channels either" in result.output
    assert "`aispendtrack alerts init`" in result.output


def test_alerts_init_writes_a_commented_file_whose_examples_all_load(tmp_path):
    from addon.core import notify
    result = _invoke(tmp_path, "alerts", "init")
    assert result.exit_code == 0 and f"Wrote {tmp_path / 'alerts.toml'}" in result.output
    written = (tmp_path / "alerts.toml").read_text()
    assert notify.load(tmp_path / "alerts.toml") == {}  # all commented out: nothing sends yet
    again = _invoke(tmp_path, "alerts", "init")
    assert again.exit_code == 1 and "exists; edit it, or use --force" in again.output
    # Every example, uncommented, is a valid channel or setting.
    (tmp_path / "alerts.toml").write_text("\n".join(line[2:] if line.startswith("# ") and "=" in line
                                                     or line.startswith("# [") else line
                                                     for line in written.splitlines()))
    assert sorted(notify.load(tmp_path / "alerts.toml")) == ["ops-email", "pager", "slack"]
    assert _invoke(tmp_path, "alerts", "init", "--force").exit_code == 0


def test_report_latencies_come_without_float_noise(tmp_path):
    from addon.core.home import db_path
    from addon.core.store import calls as call_rows
    from addon.core.store import writing

    from .helpers import call_row
    with writing(db_path(tmp_path)) as con:
        call_rows.insert(con, [call_row(n, latency_ms=ms) for n, ms in enumerate((0.1, 0.2, 0.7, 79.2767))])
    [model] = json.loads(run_cli(tmp_path, "report", "--since", "2026-11-25", "--format", "json"))
    assert repr(model["p95_latency_ms"]) == repr(round(model["p95_latency_ms"], 3))
    assert len(repr(model["p95_latency_ms"]).split(".")[1]) <= 3


def test_the_proxy_loads_its_token_encodings_at_start_not_on_the_first_estimate(tmp_path, upstream):
    import time

    from .helpers import start_proxy
    proxy = start_proxy(tmp_path / "home", upstream.url, tmp_path / "proxy.log")
    try:
        cache = tmp_path / "home" / "cache" / "tiktoken"
        deadline = time.monotonic() + 15
        while len(list(cache.glob("*"))) < 2 and time.monotonic() < deadline:  # o200k_base and cl100k_base
            time.sleep(0.1)
        assert len(list(cache.glob("*"))) == 2, "the encodings were not loaded before any call needed them"
        assert proxy.calls() == []  # no call was made: the proxy did it by itself
    finally:
        proxy.stop()


@pytest.mark.parametrize("args, message", [
    (("report", "--since", "0001-01-01T00:00+14:00"), "falls outside the years 1 to 9999 in UTC"),
    (("report", "--until", "9999-12-31T23:59:59-23:59"), "falls outside the years 1 to 9999 in UTC"),
    (("export", "--since", "0001-01-01", "--tz", "Asia/Tokyo"), "falls outside the years 1 to 9999 in UTC"),
    (("export", "--key", "9" * 30), "key must be a key id (a number from 1 to 2147483647"),
    (("purge", "--older-than", "999999w"), "at most 36,500 days (100 years)"),
    (("gdpr", "export", "--key", "-1"), "key must be a key id (a number from 1 to 2147483647"),
])
def test_times_and_numbers_out_of_range_are_refused_with_the_range(tmp_path, args, message):
    result = _invoke(tmp_path, *args)
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
    assert message in result.output, result.output


@pytest.mark.parametrize("args", [
    ("--by", "day", "--since", "9999-12-30", "--until", "9999-12-31T23:00Z"),
    ("--by", "hour", "--tz", "Asia/Kolkata", "--since", "9999-12-30", "--until", "9999-12-31T23:00Z"),
    ("--by", "month", "--tz", "Pacific/Kiritimati", "--since", "9999-12-31T05:00Z", "--until", "9999-12-31T23:59Z"),
])
def test_a_report_by_time_at_the_calendars_end_is_an_empty_table(tmp_path, args):
    # The zone's offsets were looked up past the range's end (a bucket, six hours): past 9999-12-31;
    # ahead of UTC, its last hours are local times in the year 10000.
    result = _invoke(tmp_path, "report", *args)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert result.output.splitlines()[-1].split()[:2] == ["TOTAL", "0"], result.output


def test_help_imports_neither_duckdb_nor_genai_prices():
    # They take most of a second to import: `aispendtrack --help` (and a mistyped command) must not wait for them
    # (bench/cli_start.py times it: docs/benchmarks.md).
    probe = ("import sys\nfrom cli.main import cli\ntry:\n    cli(['--help'], prog_name='aispendtrack')\n"
             "except SystemExit:\n    pass\nprint(sorted(m for m in ('duckdb', 'genai_prices', 'pricing', 'flask', "
             "'mitmproxy', 'tiktoken', 'psycopg') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "Commands:" in shown and "report" in shown
    assert shown.splitlines()[-1] == "[]"


def test_help_lists_every_command_as_click_would_with_them_all_imported():
    import click

    from cli import main

    def listing(format_commands) -> str:
        with click.Context(cli) as ctx:
            formatter = ctx.make_formatter()
            format_commands(ctx, formatter)
            return formatter.getvalue()

    lazy = listing(cli.format_commands)
    assert lazy == listing(lambda ctx, formatter: click.Group.format_commands(cli, ctx, formatter))
    assert all(f"  {name} " in lazy for name in main.COMMANDS)


def test_a_first_start_with_no_keys_makes_one_and_later_starts_none(tmp_path, capsys):
    from addon.core.home import db_path
    from cli.proxy import _first_key  # what `aispendtrack proxy` runs before mitmproxy starts
    _first_key(db_path(tmp_path))
    assert "No keys yet, so created key 1 (default)." in capsys.readouterr().out
    _first_key(db_path(tmp_path))
    assert capsys.readouterr().out == ""
    assert [k["name"] for k in json.loads(run_cli(tmp_path, "keys", "list", "--json"))] == ["default"]


def test_home_may_follow_the_command_as_it_may_precede_it(tmp_path):
    # `aispendtrack calls --home DIR` was "No such option: --home" (README: every command takes it).
    first, second = tmp_path / "first", tmp_path / "second"
    created = CliRunner().invoke(cli, ["keys", "create", "--name", "after", "--home", str(second), "--json"])
    assert created.exit_code == 0, created.output
    listed = {str(home): CliRunner().invoke(cli, ["--home", str(home), "keys", "list", "--json"]).output
              for home in (first, second)}
    assert json.loads(listed[str(first)]) == [] and [k["name"] for k in json.loads(listed[str(second)])] == ["after"]
    after = CliRunner().invoke(cli, ["--home", str(first), "keys", "list", "--json", "--home", str(second)])
    assert after.output == listed[str(second)]  # the later one, as for any option given twice
    # Given after the command only, the default data directory is not made (nor one the environment names).
    runner = CliRunner(env={"HOME": str(tmp_path / "user"), "AISPENDTRACK_HOME": None})
    assert runner.invoke(cli, ["keys", "list", "--json", "--home", str(second)]).output == listed[str(second)]
    assert not (tmp_path / "user").exists()
    unusable = CliRunner(env={"AISPENDTRACK_HOME": "/proc/nowhere"})
    assert unusable.invoke(cli, ["keys", "list", "--json", "--home", str(second)]).output == listed[str(second)]


def test_set_limit_says_what_each_limit_becomes_and_refuses_what_no_column_holds(tmp_path):
    # --per-month alone sent the key's own hourly cap of 100 back to the plan's 10,000 unmentioned;
    # 99999999999999999999 (a key) and 3000000000 (a team) were DuckDB tracebacks.
    home = tmp_path / "home"

    def run(*args: str):
        return CliRunner().invoke(cli, ["--home", str(home), *args])
    assert run("keys", "create", "--name", "a", "--plan", "pro").exit_code == 0
    assert run("keys", "set-limit", "1", "--per-hour", "100", "--per-month", "5000").output == (
        "Key 1: 100 per hour, 5,000 per month.\n")
    assert run("keys", "set-limit", "1", "--per-month", "6000").output == (
        "Key 1: per hour as its plan says (10,000) (was 100), 6,000 per month (was 5,000).\n")
    [key] = json.loads(run("keys", "list", "--json").output)
    assert (key["per_hour_limit"], key["per_month_limit"]) == (None, 6000)
    assert run("teams", "create", "t").exit_code == 0
    for args in (("keys", "set-limit", "1", "--per-hour", "99999999999999999999"),
                 ("teams", "set-limit", "t", "--per-month", "3000000000")):
        refused = run(*args)
        assert refused.exit_code == 2 and "is not in the range 1<=x<=2147483647" in refused.output, refused.output


def test_a_gdpr_exports_counts_are_worded_for_one_and_for_many(tmp_path):
    home = tmp_path / "home"
    run = lambda *args: CliRunner().invoke(cli, ["--home", str(home), *args])  # noqa: E731
    run("keys", "create", "--name", "a")
    run("budgets", "set", "--scope", "customer:acme", "--key", "1", "--daily", "5")
    written = run("gdpr", "export", "--customer", "acme", "--out", str(tmp_path / "acme.json"))
    assert written.exit_code == 0 and written.output == (  # "1 budgets" before
        f"Wrote {tmp_path / 'acme.json'}: 1 budget, 0 alerts, 0 batches, 0 calls, 0 rollups, 0 pending calls, "
        f"0 unreadable spill files\n")
    key = run("gdpr", "export", "--key", "1", "--out", str(tmp_path / "key.json"))
    assert key.exit_code == 0 and ": 0 budgets, 0 alerts, 0 batches, 1 key, 0 calls," in key.output  # not "1 ke"


def test_a_key_id_no_key_has_is_refused_like_an_unknown_name(tmp_path):
    """`export --key 99` wrote 0 calls where `--key nosuch` was refused; `report --key 99` was empty."""
    for command in (("export", "--out", str(tmp_path / "o.csv")), ("report",)):
        result = _invoke(tmp_path, *command, "--key", "99")
        assert result.exit_code == 2 and "no key 99; see `aispendtrack keys list`" in result.output, result.output


def test_a_purge_age_of_zero_says_the_range_not_the_form(tmp_path):
    result = _invoke(tmp_path, "purge", "--older-than", "0d")
    assert result.exit_code == 2 and "must be more than 0 and at most 36,500 days" in result.output, result.output


def test_a_gdpr_delete_of_a_subject_never_stored_still_reports_a_spill_file_it_could_not_read(tmp_path):
    """The "nothing was stored" answer returned before the check of unreadable spill files, which may
    hold the subject: it exited 0."""
    spill = tmp_path / "spill"
    spill.mkdir(parents=True)
    (spill / "1-1-1.jsonl").write_text('{"customer_id": "Acme"')  # torn by a crash (an older version)
    result = _invoke(tmp_path, "gdpr", "delete", "--customer", "Acme", "--yes")
    assert result.exit_code == 1 and "Nothing was stored about customer Acme" in result.output, result.output
    assert "Could not read 1 spill file" in result.output


def test_the_wide_report_counts_guardrail_checks_apart_from_tool_calls(tmp_path):
    """A call a Bedrock guardrail checked is not a tool call: it was summed into TOOL CALLS."""
    from addon.core import home as home_dir
    from addon.core.store import calls as call_rows
    from addon.core.store import writing

    from .helpers import call_row
    home = tmp_path / "home"
    home.mkdir()
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [call_row(1, customer_id="g", web_search_requests=2),
                               call_row(2, customer_id="g", provider="bedrock", guardrail_checks=1, cost_usd=None,
                                        priced=False)])
    header, *lines = run_cli(home, "report", "--customer", "g", "--since", "2026-11-25", "--until", "2026-11-26",
                             "--tz", "UTC", "--wide").splitlines()
    [total] = [line for line in lines if line.startswith("TOTAL")]

    def column(name: str) -> str:  # right-aligned under its header
        end = header.index(name) + len(name)
        return total[:end].split()[-1]
    assert (column("TOOL CALLS"), column("GUARDED")) == ("2", "1")
