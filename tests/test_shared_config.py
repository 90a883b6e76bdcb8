"""One configuration per deployment: prices.toml and alerts.toml in the shared mode, and the data
directory that migrate-to copied away (it refuses writes, naming where the data went).

Real PostgreSQL (tests/pg.py), real replicas started by the CLI, the official OpenAI SDK as the
client, the provider and a webhook receiver on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from .helpers import Receiver, free_port, start_proxy
from .price_data import PriceServer, bundled_document, with_model
from .test_price_refresh import NEW_MODEL, RATES, snapshot_id, until_priced
from .test_shared import CHAT, cli, new_key, replicas, stop_all, wait_rows

REPO = Path(__file__).resolve().parent.parent
M = Decimal(1_000_000)
# Rates no list price has: a call priced with them was priced by the override.
OVERRIDE = '[[price]]\nprovider = "openai"\nmodel = "gpt-*"\ninput_mtok = 1000\noutput_mtok = 2000\n'
HOOK_PATH = "/hooks/T0-s3cret-path"  # a webhook URL's path is its secret (Slack's are)
CHANNELS = '[[channel]]\nname = "pager"\ntype = "webhook"\nurl_env = "HOOK_URL"\nsecret_env = "HOOK_SECRET"\n'


def override_cost(completion) -> Decimal:
    usage = completion.usage
    return (usage.prompt_tokens * Decimal(1000) + usage.completion_tokens * Decimal(2000)) / M


def stored_row(proxy, customer: str) -> dict:
    [row] = proxy.rows(customer, expect=1)
    return row


def test_a_price_override_imported_on_replica_a_prices_a_call_through_replica_b(shared_env, tmp_path, upstream):
    key = new_key(tmp_path / "admin")["key"]
    a, b = replicas(tmp_path, upstream.url, 2, key)
    try:
        b.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "before"})
        assert stored_row(b, "before")["price_source"].startswith("genai-prices")
        (tmp_path / "prices.toml").write_text(OVERRIDE)
        imported = cli(a.home, "prices", "import", str(tmp_path / "prices.toml"))
        imported_at = time.monotonic()
        assert "1 entry" in imported.stdout and "prices.toml in the shared store at 127.0.0.1:" in imported.stdout
        # The running replica B prices with it from its next key refresh (every 2 s): a call every
        # 0.2 s for 4 s, each priced when its row is built (within a flush of the call).
        made, completions = [], {}
        while time.monotonic() - imported_at < 4:
            tag = f"after-{len(made)}"
            completions[tag] = b.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": tag})
            made.append((tag, time.monotonic() - imported_at))
            time.sleep(0.2)
        # Every call's row, once B has flushed the last of them (a loaded host lags a flush or two).
        rows = {r["customer_id"]: r for r in wait_rows(b.home, "after-", len(made), timeout=30)}
        assert sorted(rows) == sorted(tag for tag, _ in made)
        overridden = [(tag, at) for tag, at in made if rows[tag]["price_source"] == "override prices.toml#1"]
        assert overridden, f"B never priced with the override: {sorted({r['price_source'] for r in rows.values()})}"
        first_tag, first_at = overridden[0]
        assert first_at < 2 + 1, f"the first call priced by the override was made {first_at:.1f} s after the import"
        assert overridden == [(tag, at) for tag, at in made if at >= first_at]  # and every call after it
        assert Decimal(str(rows[first_tag]["cost_usd"])) == override_cost(completions[first_tag]) > 0
        # B's own directory has no prices.toml; its `prices check` shows the deployment's.
        assert not (b.home / "prices.toml").exists()
        checked = cli(b.home, "prices", "check")
        assert "overrides (prices.toml in the shared store at 127.0.0.1:" in checked.stdout
        assert "): 1 entry" in checked.stdout
    finally:
        stop_all([a, b])


def test_an_alert_from_replica_b_reaches_the_channel_imported_on_replica_a(shared_env, tmp_path, upstream,
                                                                          monkeypatch):
    receiver = Receiver()
    monkeypatch.setenv("HOOK_URL", receiver.url + HOOK_PATH)  # each replica's environment, as in production
    monkeypatch.setenv("HOOK_SECRET", "sign-me")
    admin = tmp_path / "replica-a"
    created = new_key(admin)
    (tmp_path / "alerts.toml").write_text(CHANNELS)
    imported = cli(admin, "alerts", "import", str(tmp_path / "alerts.toml"))
    assert "pager (webhook)" in imported.stdout and "alerts.toml in the shared store" in imported.stdout
    cli(admin, "budgets", "set", "--scope", "customer:spender", "--all-keys", "--daily", "0.000001")
    b = start_proxy(tmp_path / "replica-b", upstream.url, tmp_path / "b.log", key=created["key"],
                    extra_args=("--alert-interval", "1"))
    try:
        b.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "spender"})
        deadline = time.monotonic() + 20
        while not receiver.requests:
            assert time.monotonic() < deadline, "no alert reached the webhook"
            time.sleep(0.1)
    finally:
        b.stop()
        receiver.close()
    headers, body = receiver.requests[0]
    assert json.loads(body)["kind"] == "budget" and "customer spender" in json.loads(body)["subject"]
    assert headers["x-aispendtrack-signature"].startswith("sha256=")  # signed with B's HOOK_SECRET
    listed = cli(admin, "alerts", "list", "--json")
    [sent] = [r for r in json.loads(listed.stdout) if r["kind"] == "budget"]
    assert (sent["channel"], sent["delivered"]) == ("pager", True)
    # The URL's secret path is in no output and not in the store: the store names the variable.
    outputs = imported.stdout + imported.stderr + listed.stdout + (tmp_path / "b.log").read_text()
    assert HOOK_PATH not in outputs and "sign-me" not in outputs
    with psycopg.connect(shared_env) as con:
        [(text,)] = con.execute("SELECT text FROM aispendtrack.config_files WHERE name = 'alerts.toml'").fetchall()
    assert "HOOK_URL" in text and HOOK_PATH not in text


def test_two_replicas_price_a_call_identically_after_a_price_refresh_on_one_of_them(shared_env, tmp_path, upstream):
    """One price book per deployment: A fetches the list prices and stores them in PostgreSQL; B,
    which fetches nothing (--prices-url off), prices with the same version from its next poll."""
    key = new_key(tmp_path / "admin")["key"]
    newer = with_model(bundled_document(), "openai", NEW_MODEL, **RATES)
    with PriceServer(newer) as server:
        a = start_proxy(tmp_path / "replica-a", upstream.url, tmp_path / "a.log", key=key,
                        extra_args=("--prices-url", server.url, "--prices-refresh", "2"))
        b = start_proxy(tmp_path / "replica-b", upstream.url, tmp_path / "b.log", key=key,
                        extra_args=("--prices-url", "off", "--prices-refresh", "2"))
        try:
            on_a = until_priced(a, "on-a", within=30)
            on_b = until_priced(b, "on-b", within=30)
        finally:
            stop_all([a, b])
    assert server.requests >= 1
    assert on_a["price_snapshot"] == on_b["price_snapshot"] == snapshot_id(newer)
    assert (on_a["cost_usd"], on_a["price_source"]) == (on_b["cost_usd"], on_b["price_source"])
    assert Decimal(str(on_b["cost_usd"])) == (10 * RATES["input_mtok"] + 5 * RATES["output_mtok"]) / M
    with psycopg.connect(shared_env) as con:
        stored = con.execute("SELECT id, source, models FROM aispendtrack.price_snapshots").fetchall()
    assert stored == [(snapshot_id(newer), server.url, sum(len(p["models"]) for p in newer))]


def migrated_home(tmp_path: Path, catalog: str, data_path: str) -> tuple[Path, str, subprocess.CompletedProcess]:
    """An embedded data directory with a key, prices.toml and alerts.toml, migrated to ``catalog``."""
    home = tmp_path / "embedded"
    env = {k: v for k, v in os.environ.items() if k not in ("AISPENDTRACK_CATALOG", "AISPENDTRACK_DATA_PATH")}
    made = subprocess.run([sys.executable, "-m", "cli", "--home", str(home), "keys", "create", "--name", "old",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=60, env=env, check=True)
    (home / "prices.toml").write_text(OVERRIDE)
    (home / "alerts.toml").write_text(CHANNELS)
    copied = run(home, env, "migrate-to", "--catalog", catalog, "--data-path", data_path)
    assert copied.returncode == 0, copied.stderr
    return home, json.loads(made.stdout)["key"], copied


def run(home: Path, env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "--home", str(home), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def with_password(catalog: str) -> str:
    """The catalog's URL with a password (the test cluster trusts 127.0.0.1, so any password works)."""
    return catalog.replace("://aispend@", "://aispend:pw-s3cret@")


def test_migrate_to_carries_prices_toml_and_alerts_toml_into_the_shared_store(shared_env, tmp_path, upstream,
                                                                             monkeypatch):
    receiver = Receiver()
    monkeypatch.setenv("HOOK_URL", receiver.url + HOOK_PATH)
    monkeypatch.setenv("HOOK_SECRET", "sign-me")
    home, key, copied = migrated_home(tmp_path, shared_env, os.environ["AISPENDTRACK_DATA_PATH"])
    assert "prices.toml" in copied.stdout and "alerts.toml" in copied.stdout
    replica_home = tmp_path / "replica"
    try:
        assert "sent a test alert to pager" in cli(replica_home, "alerts", "test", "--channel", "pager").stdout.lower()
        assert len(receiver.requests) == 1
    finally:
        receiver.close()
    replica = start_proxy(replica_home, upstream.url, tmp_path / "replica.log", key=key)
    try:
        completion = replica.openai().chat.completions.create(**CHAT, extra_headers={"x-customer-id": "moved"})
        row = stored_row(replica, "moved")
        assert row["price_source"] == "override prices.toml#1"
        assert Decimal(str(row["cost_usd"])) == override_cost(completion)
    finally:
        replica.stop()


def test_a_migrated_directory_refuses_keys_create_and_the_proxy_naming_the_catalog(shared_env, tmp_path):
    catalog = with_password(shared_env)
    home, _, _ = migrated_home(tmp_path, catalog, os.environ["AISPENDTRACK_DATA_PATH"])
    env = {k: v for k, v in os.environ.items() if k not in ("AISPENDTRACK_CATALOG", "AISPENDTRACK_DATA_PATH")}
    shown = catalog.replace("pw-s3cret", "***")
    keys_before = json.loads(run(home, env, "keys", "list", "--json").stdout)
    note = (home / "MIGRATED.txt").read_text()  # for whoever lists the directory
    assert f"was migrated to the shared storage at {shown}" in note and "pw-s3cret" not in note

    refused = run(home, env, "keys", "create", "--name", "late")
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"was migrated to the shared storage at {shown}" in refused.stderr
    assert f"AISPENDTRACK_CATALOG={shown} (its password in place of ***), or --catalog" in refused.stderr
    try:
        started = run(home, env, "proxy", "--port", str(free_port()), timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the proxy started on a migrated data directory")
    assert started.returncode == 1 and f"was migrated to the shared storage at {shown}" in started.stderr
    # The web app too: its users expect current figures, and would not see a note on its standard error.
    served = run(home, env, "web", "--port", str(free_port()), timeout=30)
    assert served.returncode == 1 and f"was migrated to the shared storage at {shown}" in served.stderr
    for done in (refused, started, served):
        assert "pw-s3cret" not in done.stdout + done.stderr and "Traceback" not in done.stderr

    # Reads show the copy as it was, and say so (on standard error: JSON output stays JSON).
    listed = run(home, env, "keys", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == keys_before
    assert f"this shows its copy as of then. For the current data set AISPENDTRACK_CATALOG={shown}" in listed.stderr
    # With the catalog set, the same directory works as a replica's.
    moved_on = run(home, {**env, "AISPENDTRACK_CATALOG": shared_env}, "keys", "create", "--name", "late", "--json")
    assert moved_on.returncode == 0 and json.loads(moved_on.stdout)["name"] == "late"
