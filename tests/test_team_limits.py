"""A team's limits (issue 29): calls per hour and per month over all of a team's keys, set with
`aispendtrack teams set-limit`, held by one proxy process, by the embedded mode's workers and by
replicas on PostgreSQL. The official OpenAI SDK is the client, tests/upstream.py the provider;
the in-process Limiter is tested in tests/test_limits.py."""

from __future__ import annotations

import asyncio
import json
import math
import re

import openai
import pytest

from addon.core import home as home_dir

from .helpers import free_port, invoke, run_cli, start_proxy, until_admitted
from .loadbalancer import LoadBalancer
from .test_limits import _seconds_to_next_hour

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def new_key(home, name: str, *args: str) -> dict:
    return json.loads(run_cli(home, "keys", "create", "--name", name, "--json", *args))


def teams(home) -> dict:
    return {t["name"]: (t["per_hour_limit"], t["per_month_limit"])
            for t in json.loads(run_cli(home, "teams", "list", "--json"))}


def test_set_limit_is_stored_listed_audited_reset_and_bad_input_is_refused_by_name(tmp_path, new_store):
    home = tmp_path
    new_store(home_dir.db_path(home))
    run_cli(home, "teams", "create", "search")
    run_cli(home, "teams", "create", "ads")
    said = run_cli(home, "teams", "set-limit", "search", "--per-hour", "1200", "--per-month", "50000")
    assert said == "Team search: 1,200 per hour, 50,000 per month over all its keys.\n"
    assert teams(home) == {"search": (1200, 50000), "ads": (None, None)}
    table = run_cli(home, "teams", "list")
    assert "PER HOUR" in table and "1,200" in table and "50,000" in table
    # The limit not given is removed, said so.
    assert run_cli(home, "teams", "set-limit", "search", "--per-month", "900") == (
        "Team search: no limit per hour (was 1,200), 900 per month (was 50,000) over all its keys.\n")
    assert teams(home)["search"] == (None, 900)
    assert run_cli(home, "teams", "set-limit", "search", "--reset") == (
        "Team search: no limit per hour, no limit per month (was 900) over all its keys.\n")
    assert teams(home)["search"] == (None, None)
    for args, error in ((("search", "--per-hour", "0"), "0 is not in the range 1<=x<=2147483647"),
                        (("search", "--per-month", "-5"), "-5 is not in the range 1<=x<=2147483647"),
                        (("search", "--per-hour", "many"), "'many' is not a valid integer"),
                        (("search",), "give --per-hour and/or --per-month, or --reset"),
                        (("search", "--per-hour", "5", "--reset"), "give --per-hour and/or --per-month, or --reset"),
                        (("nope", "--per-hour", "5"), "no team named 'nope'")):
        refused = invoke(home, "teams", "set-limit", *args)
        assert refused.exit_code == 2 and error in refused.output, refused.output
        assert "Traceback" not in refused.output
    assert teams(home) == {"search": (None, None), "ads": (None, None)}
    changes = [(e["target"], e["before"], e["after"]) for e in json.loads(run_cli(home, "audit", "--json"))
               if e["action"] == "teams.set-limit"]
    assert changes == [
        ("team:search", {"per_hour_limit": None, "per_month_limit": None},
         {"per_hour_limit": 1200, "per_month_limit": 50000}),
        ("team:search", {"per_hour_limit": 1200, "per_month_limit": 50000},
         {"per_hour_limit": None, "per_month_limit": 900}),
        ("team:search", {"per_hour_limit": None, "per_month_limit": 900},
         {"per_hour_limit": None, "per_month_limit": None})]


def _no_figures(message: str) -> bool:
    """No count or limit in the message: only the reset time has digits (and the team's name none)."""
    text = message.removeprefix("Error code: 429 - ")  # the SDK's prefix
    return not re.search(r"\d", re.sub(r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in [\d,]+ s\)", "", text))


def test_two_keys_of_a_team_share_its_hourly_limit_another_team_is_free_and_a_restart_keeps_the_count(
        tmp_path, upstream):
    home = tmp_path / "home"
    run_cli(home, "teams", "create", "search")
    run_cli(home, "teams", "create", "ads")
    a, b = (new_key(home, n, "--team", "search") for n in "ab")
    other = new_key(home, "c", "--team", "ads")
    run_cli(home, "teams", "set-limit", "search", "--per-hour", "4")
    run_cli(home, "teams", "set-limit", "ads", "--per-hour", "100")
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=a["key"])

    def client(target, key: dict) -> openai.OpenAI:
        return target.openai(headers={"x-aispendtrack-key": key["key"], "x-customer-id": "team"})
    try:
        for key in (a, b, a, b):
            client(proxy, key).chat.completions.create(**CHAT)
        for key in (a, b):
            with pytest.raises(openai.RateLimitError) as raised:
                client(proxy, key).chat.completions.create(**CHAT)
            message = raised.value.message
            assert "AiSpendTrack team limit reached: the requests per hour limit of team search" in message
            assert "its figures are not shown" in message and _no_figures(message), message
            assert abs(int(raised.value.response.headers["retry-after"]) - math.ceil(_seconds_to_next_hour())) <= 2
        client(proxy, other).chat.completions.create(**CHAT)  # another team's key: its own team's count
        assert len(proxy.rows("team", expect=5)) == 5  # refused calls are neither forwarded nor stored
    finally:
        proxy.stop()
    restarted = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=a["key"])
    try:
        with pytest.raises(openai.RateLimitError) as raised:  # the team's 4 calls seeded from the stored ones
            client(restarted, b).chat.completions.create(**CHAT)
        assert "limit of team search" in raised.value.message
        run_cli(home, "keys", "move", str(b["id"]), "--team", "ads")  # b counts in ads from the next reload
        until_admitted(lambda: client(restarted, b).chat.completions.create(**CHAT), 10,
                       "a key moved to another team was still refused by its old team's limit")
        with pytest.raises(openai.RateLimitError):
            client(restarted, a).chat.completions.create(**CHAT)
        run_cli(home, "teams", "set-limit", "search", "--reset")
        until_admitted(lambda: client(restarted, a).chat.completions.create(**CHAT), 10,
                       "a team's removed limit still refused its keys")
    finally:
        restarted.stop()


def test_two_embedded_workers_hold_a_teams_limit_exactly(tmp_path, upstream, monkeypatch):
    from .test_workers import _calls, start_workers, stop

    monkeypatch.delenv("AISPENDTRACK_CATALOG", raising=False)
    home = tmp_path / "home"
    run_cli(home, "teams", "create", "search")
    a, b = (new_key(home, n, "--team", "search") for n in "ab")
    run_cli(home, "teams", "set-limit", "search", "--per-hour", "30")
    proxy = start_workers(home, upstream.url, tmp_path / "proxy.log", 2, key=a["key"])
    try:
        async def both() -> list[object]:
            done = await asyncio.gather(_calls(proxy, 50, 16, "a-", key=a["key"]),
                                        _calls(proxy, 50, 16, "b-", key=b["key"]))
            return [*done[0], *done[1]]
        outcomes = asyncio.run(both())
        # One count for the host over both keys: each worker counting alone could admit up to 60.
        assert (sum(o != "429" for o in outcomes), outcomes.count("429")) == (30, 70)
    finally:
        assert stop(proxy) == 0
    assert "Traceback" not in proxy.log_path.read_text()


def test_three_replicas_behind_a_load_balancer_hold_a_teams_limit_exactly_under_a_burst(shared_env, tmp_path,
                                                                                        upstream):
    from .test_shared import shared_count

    admin = tmp_path / "admin"
    run_cli(admin, "teams", "create", "search")
    a, b = (new_key(admin, n, "--team", "search") for n in "ab")
    # b's own limit too, reached first: what the team granted b's refused calls goes back to the team.
    run_cli(admin, "keys", "set-limit", str(b["id"]), "--per-hour", "10")
    run_cli(admin, "teams", "set-limit", "search", "--per-hour", "60")
    ports = [free_port() for _ in range(3)]
    proxies = [start_proxy(tmp_path / f"replica{i}", upstream.url, tmp_path / f"replica{i}.log", key=a["key"],
                           port=ports[i]) for i in range(3)]
    balancer = LoadBalancer(ports)
    try:
        async def burst() -> list[str]:
            clients = [openai.AsyncOpenAI(base_url=f"{balancer.url}/v1", api_key="sk-test-key", max_retries=0,
                                          timeout=60, default_headers={"x-aispendtrack-key": key["key"]})
                       for key in (a, b)]
            gate = asyncio.Semaphore(24)

            async def one(n: int) -> str:
                async with gate:
                    try:
                        await clients[n % 2].chat.completions.create(**CHAT)
                        return "ab"[n % 2]
                    except openai.RateLimitError as exc:
                        assert exc.response.headers["retry-after"].isdigit()
                        return "429"
            try:
                return await asyncio.gather(*(one(n) for n in range(150)))
            finally:
                for client in clients:
                    await client.close()
        outcomes = asyncio.run(burst())
        assert (outcomes.count("a"), outcomes.count("b"), outcomes.count("429")) == (50, 10, 90)
        import psycopg
        with psycopg.connect(shared_env) as pg:
            (team_count,) = pg.execute("SELECT hour_count FROM aispendtrack.team_limit_counters").fetchone()
        assert team_count == 60
        # Each key's own count holds only its admitted calls: the team's refusals counted in neither.
        assert [shared_count(shared_env, k["id"]) for k in (a, b)] == [50, 10]
        logs = "".join(p.log_path.read_text() for p in proxies)
        assert "counting on this replica alone" not in logs and "Traceback" not in logs
    finally:
        for proxy in proxies:
            proxy.stop()
        balancer.stop()
