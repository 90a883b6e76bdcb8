"""Metadata only: a marker sent in prompts and in provider keys is found nowhere we write."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner

from cli.main import cli

from .helpers import Receiver, free_port, start_proxy
from .pg import Cluster
from .usage_api import ADMIN_KEY, UsageApi

MARKER = "ZEBRA-7f3a9c-PRIVATE"


@pytest.fixture
def private_proxy(tmp_path, upstream):
    logs = tmp_path / "logs"
    logs.mkdir()
    proxy = start_proxy(tmp_path / "home", upstream.url, logs / "proxy.log")
    yield proxy
    proxy.stop()


def _every_file_under(*roots) -> list:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def test_prompt_and_provider_key_never_reach_disk_or_log(private_proxy, tmp_path):
    proxy = private_proxy
    secret_key = f"sk-{MARKER}-key"
    prompt = [{"role": "user", "content": f"my secret is {MARKER}"}]
    oa = proxy.openai(api_key=secret_key, headers={"x-customer-id": "privacy"})
    oa.chat.completions.create(model="gpt-4o", messages=prompt)
    list(oa.chat.completions.create(model="gpt-4o", messages=prompt, stream=True))  # estimated from the prompt
    oa.responses.create(model="gpt-4o-mini", input=f"secret {MARKER}")
    oa.embeddings.create(model="text-embedding-3-small", input=MARKER)
    an = proxy.anthropic(api_key=secret_key, headers={"x-customer-id": "privacy"})
    an.messages.create(model="claude-sonnet-4-20250514", max_tokens=10, messages=prompt)
    with an.messages.stream(model="claude-sonnet-4-20250514", max_tokens=10, messages=prompt) as stream:
        stream.until_done()
    # Refused calls too: a bad tag and a bad key.
    httpx.post(f"{proxy.url}/v1/chat/completions", json={"messages": prompt},
               headers={"authorization": f"Bearer {secret_key}", "x-aispendtrack-key": proxy.key,
                        "x-feature": f"\x01{MARKER}"})
    httpx.post(f"{proxy.url}/v1/chat/completions", json={"messages": prompt},
               headers={"authorization": f"Bearer {secret_key}", "x-aispendtrack-key": f"ask_{MARKER}"})
    assert len(proxy.rows("privacy", expect=6)) == 6
    proxy.stop()

    files = _every_file_under(proxy.home, proxy.log_path.parent)
    assert any(p.suffix == ".duckdb" for p in files) and proxy.log_path in files
    leaks = [str(p) for p in files if MARKER.encode() in p.read_bytes()]
    assert leaks == [], "\n".join(f"{name} in {where}" for name, where in leaks)
    assert proxy.key.encode() not in b"".join(p.read_bytes() for p in files)  # our own key: hash only


def command_paths(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group of the CLI, as the words that name it."""
    found = [path]
    for name, command in group.commands.items():
        found += command_paths(command, (*path, name)) if isinstance(command, click.Group) else [(*path, name)]
    return found


class Transcript:
    """Runs CLI commands in this process as a user would and keeps everything they print."""

    def __init__(self, home: Path) -> None:
        self.home, self.texts = home, []

    def run(self, *args: str, env: dict | None = None, ok: bool = True) -> str:
        result = CliRunner().invoke(cli, ["--home", str(self.home), *args], env=env)
        self.texts.append((" ".join(args), result.output))
        assert "Traceback" not in result.output, result.output
        if ok:
            assert result.exit_code == 0, (args, result.output)
        return result.output


def test_no_output_or_log_line_ever_shows_a_password_or_a_key(tmp_path, upstream, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    tag = uuid.uuid4().hex[:12]
    secrets = {"catalog password": f"pg-pw-{tag}", "webhook secret": f"whsec-{tag}",
               "OpenAI key": f"sk-proj-{tag}", "Anthropic key": f"sk-ant-api03-{tag}", "Gemini key": f"AIza{tag}",
               "admin key of the usage APIs": ADMIN_KEY, "webhook password": f"hookpw-{tag}"}
    monkeypatch.setenv("AISPENDTRACK_WEBHOOK_SECRET", secrets["webhook secret"])
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)  # for `reconcile`, and the proxy's daily run
    home = tmp_path / "home"
    cli_ = Transcript(home)
    for path in command_paths(cli):
        cli_.run(*path, "--help")
    # The two commands whose job is to show a new secret, once: their output is checked for the others.
    token = json.loads(cli_.run("admin", "create-token", "--name", "ops", "--json"))["token"]
    created = json.loads(cli_.run("keys", "create", "--name", "app", "--json"))
    own_secrets = {"admin token": token, "AiSpendTrack key": created["key"]}
    allowed = {"admin create-token --name ops --json": "admin token",
               "keys create --name app --json": "AiSpendTrack key"}

    receiver = Receiver()
    with_login = receiver.url.replace("http://", f"http://ops:{secrets['webhook password']}@")
    (home / "alerts.toml").write_text(f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n'
                                      f'secret_env = "AISPENDTRACK_WEBHOOK_SECRET"\n'
                                      f'[[channel]]\nname = "basic"\ntype = "webhook"\nurl = "{with_login}"\n')
    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"])
    try:
        proxy.openai(api_key=secrets["OpenAI key"]).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        proxy.anthropic(api_key=secrets["Anthropic key"]).messages.create(
            model="claude-sonnet-4-20250514", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        httpx.post(f"{proxy.url}/google/v1beta/models/gemini-2.5-flash:generateContent?key={secrets['Gemini key']}",
                   headers={"x-aispendtrack-key": proxy.key}, json={"contents": []})
        httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []},  # refused: bad key
                   headers={"authorization": f"Bearer {secrets['OpenAI key']}", "x-aispendtrack-key": "ask_wrong"})
        proxy.rows(None, expect=3)
    finally:
        proxy.stop()

    usage_api = UsageApi()
    try:
        for args in (("keys", "list"), ("keys", "list", "--json"), ("keys", "set-limit", str(created["id"]),
                     "--per-hour", "100"), ("calls",), ("calls", "--format", "json"), ("report", "--by", "model"),
                     ("export",), ("prices", "check"), ("budgets", "set", "--scope", "all", "--daily", "5"),
                     ("budgets", "list"), ("admin", "list-tokens"), ("config", "show"),
                     ("purge", "--dry-run"), ("gdpr", "export", "--customer", "nobody"), ("reprice", "--dry-run"),
                     ("alerts", "test", "--channel", "hook"), ("alerts", "check"), ("alerts", "list"),
                     ("reconcile", "--provider", "openai", "--upstream", usage_api.url)):
            cli_.run(*args)
        cli_.run("reconcile", "--provider", "openai", "--upstream", "http://127.0.0.1:9", ok=False)
        cli_.run("alerts", "test", "--channel", "basic", ok=False)  # a login in the URL: not sent, and not shown
    finally:
        usage_api.close()
        receiver.close()
    assert receiver.requests and "x-aispendtrack-signature" in receiver.requests[0][0]

    # The shared mode: a catalog URL with a password, reached, refused, and mistyped.
    cluster = Cluster()
    try:
        database = f"t_{tag}"
        catalog = cluster.create_database(database).replace("aispend@", f"aispend:{secrets['catalog password']}@")
        shared = {"AISPENDTRACK_CATALOG": None, "AISPENDTRACK_DATA_PATH": None}
        cli_.run("migrate-to", "--catalog", catalog, "--data-path", str(tmp_path / "lake"), env=shared)
        cli_.run("report", "--by", "model", "--catalog", catalog, env=shared)
        for args in (("keys", "list"), ("admin", "maintain")):
            cli_.run(*args, env={"AISPENDTRACK_CATALOG": catalog, "AISPENDTRACK_DATA_PATH": None})
        unreachable = catalog.replace(f":{cluster.port}/", f":{free_port()}/")
        cli_.run("report", "--catalog", unreachable, env=shared, ok=False)
        cli_.run("report", "--catalog", catalog.replace("postgresql://", "mysql://"), env=shared, ok=False)
        cli_.run("report", "--catalog", catalog.replace(database, "no_such_db"), env=shared, ok=False)
        # A proxy on it, while PostgreSQL goes away: DuckDB's errors quote the connection string whole.
        monkeypatch.setenv("AISPENDTRACK_CATALOG", catalog)
        replica = start_proxy(home, upstream.url, tmp_path / "replica.log", key=created["key"])
        try:
            replica.openai(api_key=secrets["OpenAI key"]).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            cluster.stop("immediate")
            replica.openai(api_key=secrets["OpenAI key"]).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            deadline = time.monotonic() + 15
            while "cannot write" not in replica.log_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            replica.stop()
    finally:
        cluster.remove()

    proxy_log, replica_log = proxy.log_path.read_text(), replica.log_path.read_text()
    assert "cannot write the shared storage" in replica_log
    every = {**secrets, **own_secrets}
    # Our own log records (the HTTP clients the test itself drives log their URLs at debug level).
    ours = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records
                     if r.name.split(".")[0] in ("addon", "cli", "web", "pricing", "aispendtrack"))
    texts = [*cli_.texts, ("the proxy's log", proxy_log), ("the replica's log", replica_log), ("log records", ours)]
    leaks = [(name, where) for where, text in texts
             for name, secret in every.items() if secret in text and allowed.get(where) != name]
    assert leaks == [], "\n".join(f"{name} in {where}" for name, where in leaks)


def test_duckdbs_own_errors_quote_the_catalog_password_and_ours_never_do():
    """The proxy's log and the CLI's errors carry an error's first line; DuckDB's name the connection whole."""
    import duckdb

    from addon.core.redact import first_line
    from addon.core.store import extensions
    con = duckdb.connect()
    extensions.load(con, "postgres_scanner", "test")
    for target in (f"postgresql://aispend:pw-{MARKER}@127.0.0.1:{free_port()}/db",
                   f"host=127.0.0.1 port={free_port()} user=aispend password=pw-{MARKER}"):
        with pytest.raises(duckdb.Error) as raised:
            con.execute(f"ATTACH '{target}' AS ctl (TYPE postgres)")
        assert MARKER in str(raised.value)
        assert MARKER not in first_line(raised.value) and "Unable to connect to Postgres" in first_line(raised.value)
