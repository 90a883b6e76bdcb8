"""Teams of keys (issue 29): the CLI, reports and calls by team, the API's filter and grouping,
the embedded migration and the shared mode."""

from __future__ import annotations

import datetime as dt
import json
import time
import zoneinfo
from decimal import Decimal

import duckdb
import httpx
import openai
import pytest
from click.testing import CliRunner

from addon.core import home as home_dir
from addon.core import periods
from addon.core.store import budgets as budget_rows
from addon.core.store import calls as call_rows
from addon.core.store import migrations, reading, shared, writing
from addon.core.store import teams as team_rows
from addon.core.store.connection import snapshot
from cli.main import cli
from web import create_app

from .helpers import invoke, migrated_before, run_cli, start_proxy, until, until_admitted
from .helpers import report_row as row


def new_key(home, name: str, *args: str) -> int:
    return json.loads(run_cli(home, "keys", "create", "--name", name, "--json", *args))["id"]


# Keys 1 and 2 in team search, key 3 in team ads, key 4 in none; one call with no key.
CALLS = [row("2026-11-02T10:00:00", "gpt-4o", "1.00", 100, key_id=1),
         row("2026-11-02T10:20:00", "gpt-4o", "2.00", 100, key_id=2),
         row("2026-11-02T11:00:00", "gpt-4o", "4.00", 100, key_id=3),
         row("2026-11-02T12:00:00", "gpt-4o", "8.00", 100, key_id=4),
         row("2026-11-02T12:30:00", "gpt-4o", "16.00", 100, key_id=None)]


@pytest.fixture
def home(tmp_path, new_store):
    new_store(home_dir.db_path(tmp_path))
    run_cli(tmp_path, "teams", "create", "search")
    run_cli(tmp_path, "teams", "create", "ads")
    assert [new_key(tmp_path, n, *t) for n, t in (("a", ("--team", "search")), ("b", ("--team", "search")),
                                                  ("c", ("--team", "ads")), ("d", ()))] == [1, 2, 3, 4]
    with writing(home_dir.db_path(tmp_path)) as con:
        call_rows.insert(con, CALLS)
    return tmp_path


def by_team(home, *args: str) -> dict:
    groups = json.loads(run_cli(home, "report", "--by", "team", "--format", "json", *args))
    return {g["team"]: (g["calls"], g["cost_usd"]) for g in groups}


def test_teams_are_created_listed_renamed_and_deleted_only_when_empty_or_asked(home):
    listed = json.loads(run_cli(home, "teams", "list", "--json"))
    assert [(t["name"], t["keys"]) for t in listed] == [("ads", 1), ("search", 2)]
    keys = {k["id"]: k["team"] for k in json.loads(run_cli(home, "keys", "list", "--json"))}
    assert keys == {1: "search", 2: "search", 3: "ads", 4: None}
    taken = invoke(home, "teams", "create", "search")
    assert taken.exit_code == 1 and "A team named 'search' exists already" in taken.output
    assert "no team named 'nope'" in invoke(home, "keys", "create", "--name", "e", "--team", "nope").output
    assert invoke(home, "teams", "rename", "ads", "search").exit_code == 1
    assert run_cli(home, "teams", "rename", "ads", "marketing") == "Renamed team ads to marketing.\n"
    refused = invoke(home, "teams", "delete", "search")
    assert refused.exit_code == 1
    assert "Team search has 2 keys (id 1, 2); nothing deleted." in refused.output
    assert "--move-keys-out" in refused.output
    assert [t["name"] for t in json.loads(run_cli(home, "teams", "list", "--json"))] == ["marketing", "search"]
    assert run_cli(home, "teams", "delete", "search", "--move-keys-out") == \
        "Deleted team search; 2 keys (id 1, 2) now in no team.\n"
    run_cli(home, "keys", "move", "3", "--no-team")
    assert run_cli(home, "teams", "delete", "marketing") == "Deleted team marketing.\n"
    assert json.loads(run_cli(home, "teams", "list", "--json")) == []
    assert {k["team"] for k in json.loads(run_cli(home, "keys", "list", "--json"))} == {None}


def _team_state(home) -> tuple:
    listed = [json.loads(run_cli(home, *command, "--json")) for command in (("teams", "list"), ("keys", "list"),
                                                                           ("budgets", "list"), ("audit",))]
    return tuple(listed[:2]) + ([(b["scope"], b["scope_value"], b["spent_today_usd"]) for b in listed[2]],
                               len(listed[3]))


@pytest.mark.parametrize("change", [("teams", "rename", "search", "web"),
                                    ("teams", "delete", "search", "--move-keys-out"),
                                    ("keys", "move", "1", "--team", "ads")])
def test_a_team_change_that_fails_half_way_leaves_nothing_half_made(home, monkeypatch, change):
    """The team, its keys' team, its budgets and the audit entry change together or not at all: here
    the entry cannot be written (as a full disk or a lost catalog would refuse it), after the rest."""
    _fails_whole(home, monkeypatch, change)


def test_a_team_change_that_fails_half_way_in_the_shared_mode_leaves_nothing_half_made(shared_env, tmp_path,
                                                                                        monkeypatch):
    run_cli(tmp_path, "teams", "create", "search")
    new_key(tmp_path, "a", "--team", "search")
    for change in (("teams", "rename", "search", "web"), ("teams", "delete", "search", "--move-keys-out"),
                   ("keys", "move", "1", "--no-team")):
        _fails_whole(tmp_path, monkeypatch, change)


def _fails_whole(home, monkeypatch: pytest.MonkeyPatch, change: tuple[str, ...]) -> None:
    from addon.core import audit
    run_cli(home, "budgets", "set", "--scope", "team:search", "--daily", "5")
    before = _team_state(home)

    def refused(*args, **kwargs):
        raise duckdb.IOException("No space left on device")

    with monkeypatch.context() as patched:  # its own undo: the shared mode's settings stay
        patched.setattr(audit, "record", refused)
        failed = CliRunner().invoke(cli, ["--home", str(home), *change])
    assert failed.exit_code != 0
    assert _team_state(home) == before


def test_team_names_with_sql_control_characters_or_past_the_limit(home):
    """Probe: a name with SQL in it is just a name (stored, listed, filtered on as given); a name with
    control characters (a terminal escape, a newline) or over 100 characters is refused, nothing made."""
    sql = "x'); DROP TABLE keys; --"
    assert run_cli(home, "teams", "create", sql) == f"Created team {sql}.\n"
    run_cli(home, "keys", "move", "4", "--team", sql)
    assert by_team(home, "--team", sql) == {sql: (1, 8.0)}
    for bad in ("red\x1b[31m", "two\nlines", "t" * 101):
        for args in (("teams", "create", bad), ("teams", "rename", "ads", bad)):
            refused = invoke(home, *args)
            assert refused.exit_code == 2 and "1 to 100 printable characters" in refused.output
        # A key's name alike: it split `keys list` and went to terminals raw.
        refused = invoke(home, "keys", "create", "--name", bad)
        assert refused.exit_code == 2 and "a key's name is 1 to 100 printable characters" in refused.output
    # The name reports give the keys in no team: a team of that name read as none in their tables.
    refused = invoke(home, "teams", "create", "(no team)")
    assert refused.exit_code == 2 and "(no team) is how reports name the keys in no team" in refused.output
    listed = json.loads(run_cli(home, "teams", "list", "--json"))
    assert sorted(t["name"] for t in listed) == sorted(["ads", "search", sql])
    assert len(json.loads(run_cli(home, "keys", "list", "--json"))) == 4


def test_report_by_team_goes_through_the_keys_and_a_moved_key_takes_its_calls(home):
    assert by_team(home) == {None: (2, 24.0), "search": (2, 3.0), "ads": (1, 4.0)}
    assert by_team(home, "--exact") == by_team(home)  # rollups and raw rows agree
    # A range that cuts the 15-minute buckets: stored rollups and raw edges both go through the keys.
    assert by_team(home, "--since", "2026-11-02T10:10", "--until", "2026-11-02T12:10") == \
        {"ads": (1, 4.0), None: (1, 8.0), "search": (1, 2.0)}
    table = run_cli(home, "report", "--by", "team")
    assert [line.split()[0] for line in table.splitlines()[1:4]] == ["(no", "ads", "search"]
    run_cli(home, "keys", "move", "4", "--team", "ads")
    assert by_team(home) == {None: (1, 16.0), "ads": (2, 12.0), "search": (2, 3.0)}
    assert by_team(home, "--team", "ads") == {"ads": (2, 12.0)}
    two = json.loads(run_cli(home, "report", "--by", "team", "--by", "key", "--team", "search", "--format", "json"))
    assert sorted((g["team"], g["key_id"], g["cost_usd"]) for g in two) == [("search", 1, 1.0), ("search", 2, 2.0)]
    calls = json.loads(run_cli(home, "calls", "--team", "ads", "--format", "json"))
    assert [c["key_id"] for c in calls] == [4, 3]
    unknown = invoke(home, "calls", "--team", "nope")
    assert unknown.exit_code == 2 and "no team named 'nope'" in unknown.output


def test_keys_move_says_where_and_refuses_what_does_not_exist(home):
    assert run_cli(home, "keys", "move", "1", "--team", "ads") == \
        "Key 1 is in team ads; its past calls report there too.\n"
    assert "no team named 'x'" in invoke(home, "keys", "move", "1", "--team", "x").output
    assert "No key with id 99" in invoke(home, "keys", "move", "99", "--team", "ads").output
    assert "give --team NAME or --no-team" in invoke(home, "keys", "move", "1").output
    assert run_cli(home, "keys", "move", "1", "--no-team") == "Key 1 is in no team; its past calls report there too.\n"


def test_the_api_groups_and_filters_by_team(home):
    client = create_app(home, {"TESTING": True}).test_client()
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    key3 = json.loads(run_cli(home, "keys", "create", "--name", "c2", "--team", "ads", "--json"))

    def get(path: str, token: str = admin):
        return client.get(path, headers={"Authorization": f"Bearer {token}"})

    groups = get("/api/v1/report?by=team").get_json()
    assert groups == json.loads(run_cli(home, "report", "--by", "team", "--format", "json"))
    assert {g["team"]: g["calls"] for g in groups} == {None: 2, "search": 2, "ads": 1}
    assert get("/api/v1/report/total?team=search").get_json()["cost_usd"] == 3.0
    assert [c["key_id"] for c in get("/api/v1/calls?team=search").get_json()["calls"]] == [2, 1]
    exported = get("/api/v1/export?format=json&team=ads").get_json()
    assert [r["key_id"] for r in exported] == [3]
    unknown = get("/api/v1/report?by=team&team=nope")
    assert (unknown.status_code, unknown.get_json()["error"]["code"]) == (400, "bad_request")
    assert unknown.get_json()["error"]["message"] == "team: no team named 'nope' (`aispendtrack teams list`)."
    # A key in team ads sees only its own calls, whichever team it asks for.
    assert get("/api/v1/report?by=team", key3["key"]).get_json() == []
    assert get("/api/v1/report?team=search", key3["key"]).status_code == 400  # not its team
    assert get("/api/v1/report?team=ads", key3["key"]).get_json() == []


@pytest.mark.parametrize("exact", ["false", "true"])
def test_a_key_sees_only_its_own_spend_through_team_filters_grouping_and_exact_reports(home, exact):
    """Probe: a key in team search (its one call $32; the team's other keys spent $3) asks for its
    team, groups by team, and reads raw rows (exact=true) or the rollups: only its own $32 every time;
    another key is a 403. Asking for another team said whether it existed (200 or 400): now both are
    the same 400."""
    client = create_app(home, {"TESTING": True}).test_client()
    mine = json.loads(run_cli(home, "keys", "create", "--name", "e", "--team", "search", "--json"))
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [row("2026-11-02T13:00:00", "gpt-4o", "32.00", 100, key_id=mine["id"])])

    def get(path: str):
        return client.get(f"{path}&exact={exact}&since=2026-11-01",
                          headers={"Authorization": f"Bearer {mine['key']}"})

    grouped = get("/api/v1/report?by=team").get_json()
    assert [(g["team"], g["calls"], g["cost_usd"]) for g in grouped] == [("search", 1, 32.0)]
    assert get("/api/v1/report/total?team=search").get_json()["cost_usd"] == 32.0
    assert [g["cost_usd"] for g in get("/api/v1/report?by=key&team=search").get_json()] == [32.0]
    # Another team's name and a name no team has read alike: a key cannot list the organisation's teams.
    answers = [get(f"/api/v1/report/total?team={name}") for name in ("ads", "nope")]
    assert [(a.status_code, a.get_json()["error"]["code"]) for a in answers] == [(400, "bad_request")] * 2
    assert [a.get_json()["error"]["message"] for a in answers] == [
        f"team: key {mine['id']} is not in a team named {name!r}; its team is 'search'." for name in ("ads", "nope")]
    other = get("/api/v1/report?by=team&key=1")
    assert other.status_code == 403 and "only see its own calls" in other.get_json()["error"]["message"]
    assert [c["key_id"] for c in get("/api/v1/calls?team=search").get_json()["calls"]] == [mine["id"]]


def test_the_migration_puts_existing_keys_in_no_team(tmp_path):
    db = home_dir.db_path(tmp_path)
    db.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db))
    migrated_before(con, migrations.m025_teams)
    con.execute("INSERT INTO keys (name, key_hash, prefix, created_at, plan) VALUES ('old', 'h', 'ask_x', now(), "
                "'free')")
    assert migrations.apply_pending(con)[0] == "m025_teams"
    con.close()
    home = tmp_path
    with reading(db) as con:
        assert migrations.is_current(con)
    run_cli(home, "teams", "create", "old-ones")
    run_cli(home, "keys", "move", "1", "--team", "old-ones")
    assert [(k["name"], k["team"]) for k in json.loads(run_cli(home, "keys", "list", "--json"))] == \
        [("old", "old-ones")]


def test_teams_in_the_shared_mode_live_in_postgresql_and_reports_join_the_lake_to_them(shared_env, tmp_path):
    from .helpers import call_row
    home, other = tmp_path / "admin", tmp_path / "replica"  # two data directories, one catalog
    run_cli(home, "teams", "create", "search")
    keys = [new_key(home, "a", "--team", "search"), new_key(other, "b")]
    assert [(t["name"], t["keys"]) for t in json.loads(run_cli(other, "teams", "list", "--json"))] == [("search", 1)]
    with writing(home / "unused.duckdb") as con:  # the shared store, whatever the path
        call_rows.insert(con, [call_row(1, key_id=keys[0]), call_row(2, key_id=keys[1]),
                               call_row(3, key_id=keys[1])])
    assert by_team(other) == {"search": (1, 0.01), None: (2, 0.02)}
    run_cli(other, "keys", "move", str(keys[1]), "--team", "search")
    assert by_team(home) == {"search": (3, 0.03)}
    assert by_team(home, "--exact", "--team", "search") == {"search": (3, 0.03)}
    refused = invoke(home, "teams", "delete", "search")
    assert refused.exit_code == 1 and "has 2 keys" in refused.output
    # The audit trail is in PostgreSQL too: one for every replica's changes.
    assert [(e["action"], e["target"]) for e in json.loads(run_cli(other, "audit", "--json"))] == [
        ("teams.create", "team:search"), ("keys.create", f"key:{keys[0]}"), ("keys.create", f"key:{keys[1]}"),
        ("keys.move", f"key:{keys[1]}")]


# --- team budgets ------------------------------------------------------------------------------

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "weather?"}]}
LEGACY_COST = Decimal("0.000405")  # the upstream's "legacy" answer, priced


THREE_CALLS = (3 * LEGACY_COST, 3 * LEGACY_COST)  # a team budget's today and this month


def team_budget(home, expect: tuple[Decimal, Decimal] | None = None) -> tuple[Decimal, Decimal]:
    """The team budget's (today, this month) as `budgets list` shows it: from stored calls, so a
    running proxy's last calls count once its writer has flushed them (``expect``: wait up to 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        [listed] = [b for b in json.loads(run_cli(home, "budgets", "list", "--json")) if b["scope"] == "team"]
        found = Decimal(str(listed["spent_today_usd"])), Decimal(str(listed["spent_this_month_usd"]))
        if expect is None or found == expect or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_a_team_budget_sums_its_keys_blocks_them_all_and_follows_a_moved_key(tmp_path, upstream):
    home = tmp_path / "home"
    run_cli(home, "teams", "create", "search")
    a, b, outside = (json.loads(run_cli(home, "keys", "create", "--name", n, "--json", *t))
                     for n, t in (("a", ("--team", "search")), ("b", ("--team", "search")), ("c", ())))
    bad = invoke(home, "budgets", "set", "--scope", "team:nope", "--daily", "1")
    assert bad.exit_code == 2 and "no team named 'nope'" in bad.output
    said = run_cli(home, "budgets", "set", "--scope", "team:search", "--daily", "0.001", "--block")
    assert "for team search: $0.001 a day, blocking." in said
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=a["key"])
    try:
        def client(key: dict):
            return proxy.openai(headers={"x-aispendtrack-key": key["key"], "x-test-scenario": "legacy"})
        for key in (a, a, b):  # 0.000405 each: b's call takes the team past $0.001
            client(key).chat.completions.create(**CHAT)
        for key in (a, b):
            with pytest.raises(openai.RateLimitError) as raised:
                client(key).chat.completions.create(**CHAT)
            message = raised.value.message
            assert "budget set by the administrator over team search blocks this call" in message
            assert "$" not in message  # the other keys' spend is not this key's to know
        client(outside).chat.completions.create(**CHAT)  # in no team: not this budget's
        assert team_budget(home, THREE_CALLS) == THREE_CALLS
        # b leaves the team, taking its spend: the team is back under its budget, and b is free.
        run_cli(home, "keys", "move", str(b["id"]), "--no-team")
        until_admitted(lambda: client(a).chat.completions.create(**CHAT), 20, "a moved key's spend stayed")
        client(b).chat.completions.create(**CHAT)
        assert team_budget(home, THREE_CALLS) == THREE_CALLS  # a's three calls now
        # Renamed, the team keeps its budget (and a the spend that crossed it): refused under its new name
        # once the proxy has read it (~2 s, later on a loaded host).
        run_cli(home, "teams", "rename", "search", "retrieval")
        deadline = time.monotonic() + 20
        while True:
            with pytest.raises(openai.RateLimitError) as raised:
                client(a).chat.completions.create(**CHAT)
            if "over team retrieval" in raised.value.message or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "over team retrieval" in raised.value.message
    finally:
        proxy.stop()
    assert [b["scope_value"] for b in json.loads(run_cli(home, "budgets", "list", "--json"))] == ["retrieval"]
    assert run_cli(home, "teams", "delete", "retrieval", "--move-keys-out") == \
        f"Deleted team retrieval; 1 key (id {a['id']}) now in no team; its 1 budget (id 1) deleted.\n"


@pytest.mark.parametrize("mode", ["embedded", "shared"])
def test_the_proxy_reads_a_team_and_its_budget_as_of_one_moment(mode, request, tmp_path):
    """The proxy reads the budgets, then the keys' teams: a rename between the two showed the budget
    over a team no key was in, whose spend the proxy counted again from none of the calls ($0)."""
    if mode == "shared":
        request.getfixturevalue("shared_env")
    home = tmp_path / "home"
    run_cli(home, "teams", "create", "search")
    key = new_key(home, "a", "--team", "search")
    run_cli(home, "budgets", "set", "--scope", "team:search", "--daily", "1", "--block")
    with writing(home_dir.db_path(home)) as con:
        other = con.cursor() if mode == "embedded" else shared.ControlConnection(shared.configured())
        try:
            with snapshot(con):
                teams = team_rows.names_of_keys(con)
                team_rows.rename(other, team_rows.find(other, "search"), "retrieval")  # as `teams rename`
                budget_rows.rename_team(other, "search", "retrieval")
                budgets = budget_rows.all_budgets(con)
            assert (teams, [b["scope_value"] for b in budgets]) == ({key: "search"}, ["search"])
            assert team_rows.names_of_keys(con) == {key: "retrieval"}
            assert [b["scope_value"] for b in budget_rows.all_budgets(con)] == ["retrieval"]
        finally:
            other.close()


def test_a_team_budget_in_the_shared_mode_holds_over_three_replicas_and_a_move_recounts_it(shared_env, tmp_path,
                                                                                          upstream):
    admin = tmp_path / "admin"
    run_cli(admin, "teams", "create", "search")
    a, b = (json.loads(run_cli(admin, "keys", "create", "--name", n, "--json", "--team", "search")) for n in "ab")
    run_cli(admin, "budgets", "set", "--scope", "team:search", "--daily", "0.001", "--block")
    proxies = [start_proxy(tmp_path / f"replica{i}", upstream.url, tmp_path / f"replica{i}.log", key=a["key"])
               for i in range(3)]
    try:
        def client(proxy, key: dict):
            return proxy.openai(headers={"x-aispendtrack-key": key["key"], "x-test-scenario": "legacy"})

        def refuses(proxy, key: dict) -> bool:
            """Whether ``proxy`` refuses ``key``'s calls now, asked with a call that costs nothing if admitted."""
            return httpx.get(f"{proxy.url}/v1/models", headers={"x-aispendtrack-key": key["key"]},
                             timeout=10).status_code == 429
        client(proxies[0], a).chat.completions.create(**CHAT)
        client(proxies[1], a).chat.completions.create(**CHAT)
        client(proxies[2], b).chat.completions.create(**CHAT)  # the team's third: past $0.001 over the replicas
        for proxy, key in ((proxies[1], b), (proxies[0], a), (proxies[2], a)):
            # The replicas share their spend every 0.25 s (later on a loaded host).
            until(lambda: refuses(proxy, key), 20, "a replica never heard of the others' spend")
            with pytest.raises(openai.RateLimitError) as raised:
                client(proxy, key).chat.completions.create(**CHAT)
            assert "over team search" in raised.value.message
        assert team_budget(admin, THREE_CALLS) == THREE_CALLS
        run_cli(admin, "keys", "move", str(b["id"]), "--no-team")  # the shared spend becomes a's two calls
        # proxies[1] has read the move (~2 s) and synced the shared spend since.
        until(lambda: not refuses(proxies[1], a), 20, "the moved key's spend stayed")
        client(proxies[1], a).chat.completions.create(**CHAT)
        until(lambda: refuses(proxies[0], a), 20, "a replica never heard of the other's spend")
        with pytest.raises(openai.RateLimitError):  # a's third call crossed it again, seen on both
            client(proxies[0], a).chat.completions.create(**CHAT)
    finally:
        for proxy in proxies:
            proxy.stop()
    assert team_budget(admin, THREE_CALLS) == THREE_CALLS


def test_a_moved_key_takes_its_spend_between_the_shared_team_budgets_in_the_quota_zone(shared_env, tmp_path):
    """In-process (the mutation selection's): what the replicas take at their next sync after
    `keys move` is each team budget's spend recounted from its keys' stored calls, by the quota
    zone's day and month."""
    from addon.core.store import counters
    from addon.core.store.connection import control

    from .helpers import call_row
    home = tmp_path / "admin"
    run_cli(home, "config", "set", "quota-tz", "Asia/Kathmandu")  # +5:45: its day is not UTC's
    zone = zoneinfo.ZoneInfo("Asia/Kathmandu")
    for name in ("search", "ads", "idle"):
        run_cli(home, "teams", "create", name)
        run_cli(home, "budgets", "set", "--scope", f"team:{name}", "--daily", "100")
    a, b = new_key(home, "a", "--team", "search"), new_key(home, "b", "--team", "search")
    now = dt.datetime.now(dt.UTC)
    day, month = periods.day_start(now, zone), periods.month_start(now, zone)
    calls = [call_row(1, key_id=a, ts=day, cost_usd=Decimal("1")),  # the day's first instant
             call_row(2, key_id=b, ts=day, cost_usd=Decimal("2")),
             call_row(3, key_id=b, ts=day - dt.timedelta(microseconds=1), cost_usd=Decimal("4")),  # the day before
             call_row(4, key_id=b, ts=month - dt.timedelta(microseconds=1), cost_usd=Decimal("8"))]  # last month
    with writing(home / "unused.duckdb") as con:  # the shared store, whatever the path
        call_rows.insert(con, calls)
        counters.set_spend(control(con), {3: (Decimal("16"), Decimal("16"))}, day, month)  # idle's, as synced
    run_cli(home, "keys", "move", str(b), "--team", "ads")
    if periods.day_start(dt.datetime.now(dt.UTC), zone) != day:
        pytest.skip("the quota zone's day ended during the test")
    before_today = Decimal("4") if day > month else Decimal("0")  # the 1st of a month has no day before it
    with reading(home / "unused.duckdb") as con:
        synced = counters.spend(control(con), day, month)
    assert synced == {1: (Decimal("1"), Decimal("1")), 2: (Decimal("2"), Decimal("2") + before_today),
                      3: (Decimal("16"), Decimal("16"))}  # budget ids in the order set; idle's untouched
