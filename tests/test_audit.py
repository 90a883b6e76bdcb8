"""The audit trail (issue 29): every change through the CLI or the API, who made it, before and
after; `aispendtrack audit`, `GET /api/v1/audit` (admin tokens only), and GDPR erase scrubbing it."""

from __future__ import annotations

import getpass
import json

import click
from click.testing import CliRunner

from addon.core import home as home_dir
from addon.core.store import calls as call_rows
from addon.core.store import writing
from cli.main import cli
from web import create_app

from .helpers import call_row, run_cli

OVERRIDE = '[[price]]\nprovider = "openai"\nmodel = "gpt-*"\ninput_mtok = 1000\noutput_mtok = 2000\n'
CHANNELS = '[[channel]]\nname = "pager"\ntype = "webhook"\nurl_env = "HOOK_URL"\n'


def trail(home, *args: str) -> list[dict]:
    return json.loads(run_cli(home, "audit", "--json", *args))


def test_every_cli_change_is_an_entry_with_who_what_and_the_values_before_and_after(migrated_home, tmp_path):
    home, me = migrated_home, f"cli:{getpass.getuser()}"
    key = json.loads(run_cli(home, "keys", "create", "--name", "backend", "--json"))["id"]
    run_cli(home, "keys", "set-plan", str(key), "pro")
    run_cli(home, "keys", "set-limit", str(key), "--per-hour", "50")
    run_cli(home, "keys", "set-retention", str(key), "--days", "30")
    run_cli(home, "teams", "create", "search")
    run_cli(home, "teams", "set-limit", "search", "--per-hour", "100")
    run_cli(home, "keys", "move", str(key), "--team", "search")
    run_cli(home, "teams", "rename", "search", "retrieval")
    run_cli(home, "keys", "move", str(key), "--no-team")
    run_cli(home, "teams", "delete", "retrieval")
    token = json.loads(run_cli(home, "admin", "create-token", "--json"))["id"]
    run_cli(home, "admin", "revoke-token", str(token))
    run_cli(home, "budgets", "set", "--scope", "all", "--daily", "5")
    run_cli(home, "budgets", "set", "--scope", "all", "--daily", "7", "--block")
    run_cli(home, "budgets", "delete", "1")
    run_cli(home, "config", "set", "quota-tz", "America/New_York")
    (tmp_path / "prices.toml").write_text(OVERRIDE)
    run_cli(home, "prices", "import", str(tmp_path / "prices.toml"))
    (tmp_path / "alerts.toml").write_text(CHANNELS)
    run_cli(home, "alerts", "import", str(tmp_path / "alerts.toml"))
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [call_row(1, key_id=key, model="gpt-4o-2024-08-06")])
    run_cli(home, "reprice", "--quiet")
    run_cli(home, "purge", "--older-than", "3650d", "--quiet")
    run_cli(home, "keys", "revoke", str(key))
    entries = trail(home)
    assert [e["action"] for e in entries] == [
        "keys.create", "keys.set-plan", "keys.set-limit", "keys.set-retention", "teams.create", "teams.set-limit",
        "keys.move", "teams.rename", "keys.move", "teams.delete", "admin.create-token", "admin.revoke-token",
        "budgets.set", "budgets.set", "budgets.delete", "config.set", "prices.import", "alerts.import", "reprice",
        "purge", "keys.revoke"]
    # With the entries the other tests check (the GDPR ones below, admin.encrypt in test_encryption,
    # migrate-to in test_shared, admin.end-sso-sessions in test_sso), every audited command of AUDITED is run.
    assert {e["action"] for e in entries} | {"gdpr.export", "gdpr.erase", "admin.encrypt", "migrate-to",
                                             "admin.end-sso-sessions"} == set(AUDITED.values())
    assert {e["actor"] for e in entries} == {me}
    by_action = {e["action"]: e for e in entries}
    assert (by_action["keys.set-plan"]["target"], by_action["keys.set-plan"]["before"],
            by_action["keys.set-plan"]["after"]) == (f"key:{key}", {"plan": "enterprise"}, {"plan": "pro"})
    assert by_action["keys.create"]["after"] == {"name": "backend", "plan": "enterprise", "team": None}
    assert by_action["teams.rename"]["before"] == {"name": "search"}
    assert (by_action["teams.set-limit"]["target"], by_action["teams.set-limit"]["after"]) == (
        "team:search", {"per_hour_limit": 100, "per_month_limit": None})
    budget_changes = [(e["before"] and e["before"]["daily_usd"], e["after"] and e["after"]["daily_usd"])
                      for e in entries if e["action"].startswith("budgets.")]
    assert budget_changes == [(None, "5"), ("5", "7"), ("7", None)]
    assert by_action["config.set"]["before"] == {"value": "UTC"}
    assert by_action["config.set"]["after"] == {"value": "America/New_York"}
    assert by_action["prices.import"]["after"]["text"] == OVERRIDE
    assert by_action["alerts.import"]["after"] == {"channels": {"pager": "webhook"}}
    assert by_action["reprice"]["after"]["changed"] == 1
    assert by_action["purge"]["after"]["older_than_days"] == 3650
    table = run_cli(home, "audit")
    assert "keys.set-plan" in table and "plan: enterprise -> pro" in table and me in table
    assert trail(home, "--since", "2999-01-01") == []
    bad = CliRunner().invoke(cli, ["--home", str(home), "audit", "--since", "yesterday-ish"])
    assert bad.exit_code == 2 and "cannot read since 'yesterday-ish'" in bad.output


# Every CLI command, by what it changes. A new command joins one of these lists, and a changing one
# gets its entry: this test fails on a command in neither list.
AUDITED = {  # command -> its entry's action (tested in the test above, test_encryption and test_shared)
    "keys create": "keys.create", "keys set-plan": "keys.set-plan", "keys set-limit": "keys.set-limit",
    "keys set-retention": "keys.set-retention", "keys move": "keys.move", "keys revoke": "keys.revoke",
    "teams create": "teams.create", "teams rename": "teams.rename", "teams delete": "teams.delete",
    "teams set-limit": "teams.set-limit",
    "admin create-token": "admin.create-token", "admin revoke-token": "admin.revoke-token",
    "admin end-sso-sessions": "admin.end-sso-sessions", "admin encrypt": "admin.encrypt",
    "budgets set": "budgets.set", "budgets delete": "budgets.delete",
    "config set": "config.set", "prices import": "prices.import", "alerts import": "alerts.import",
    "reprice": "reprice", "purge": "purge", "gdpr export": "gdpr.export", "gdpr delete": "gdpr.erase",
    "migrate-to": "migrate-to"}
NOT_CHANGES = {  # command -> why it has no entry
    "admin backup": "copies the file, changes nothing", "admin list-tokens": "reads",
    "admin maintain": "compacts the file: the same values", "alerts check": "the alert round's own history",
    "alerts init": "writes an example file; `alerts import` stores it", "alerts list": "reads",
    "alerts test": "sends a test message", "audit": "reads", "budgets list": "reads",
    "ca": "prints the forward mode's CA", "calls": "reads", "config show": "reads", "export": "reads",
    "keys list": "reads", "prices check": "reads", "prices diff": "reads", "proxy": "serves",
    "reconcile": "the providers' books beside ours", "report": "reads", "teams list": "reads", "web": "serves"}


def _commands(group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()) -> list[str]:
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += _commands(command, ctx, (*path, name))
        else:
            found.append(" ".join((*path, name)))
    return found


def test_every_cli_command_is_either_audited_or_changes_nothing():
    commands = _commands(cli, click.Context(cli))
    assert sorted(c for c in commands if c not in AUDITED and c not in NOT_CHANGES) == []
    assert sorted(c for c in [*AUDITED, *NOT_CHANGES] if c not in commands) == []


def test_every_changing_api_route_is_audited(migrated_home):
    """The API's changing routes are the purge and the GDPR erase (the test below records both); the
    page's sign-in and sign-out change only sessions."""
    app = create_app(migrated_home, {"TESTING": True})
    changing = sorted(rule.rule for rule in app.url_map.iter_rules() if rule.methods - {"GET", "HEAD", "OPTIONS"})
    assert [r for r in changing if r.startswith("/api/")] == ["/api/v1/gdpr/delete", "/api/v1/purge"]


def test_the_api_records_its_changes_as_the_admin_token_and_only_admins_read_the_trail(migrated_home):
    home = migrated_home
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))
    key = json.loads(run_cli(home, "keys", "create", "--name", "k", "--json"))
    run_cli(home, "budgets", "set", "--scope", "customer:acme-person", "--key", str(key["id"]), "--daily", "3")
    client = create_app(home, {"TESTING": True}).test_client()
    as_admin = {"Authorization": f"Bearer {admin['token']}"}
    assert client.get("/api/v1/gdpr/export?customer=acme-person", headers=as_admin).status_code == 200
    assert client.post("/api/v1/purge", json={"older_than_days": 30}, headers=as_admin).status_code == 200
    assert client.post("/api/v1/gdpr/delete", json={"customer": "acme-person"}, headers=as_admin).status_code == 200
    refused = client.get("/api/v1/audit", headers={"Authorization": f"Bearer {key['key']}"})
    assert refused.status_code == 403 and "use an admin token" in refused.get_json()["error"]["message"]
    entries = client.get("/api/v1/audit", headers=as_admin).get_json()
    assert entries == json.loads(json.dumps(trail(home)))
    api_made = [(e["actor"], e["action"], e["target"]) for e in entries if e["actor"].startswith("admin:")]
    assert api_made == [(f"admin:{admin['id']}", "gdpr.export", "customer:(erased)"),
                        (f"admin:{admin['id']}", "purge", "calls"),
                        (f"admin:{admin['id']}", "gdpr.erase", "customer:(erased)")]
    # The erase took the customer's id out of every entry; the entries stay.
    assert "acme-person" not in json.dumps(entries)
    [budget] = [e for e in entries if e["action"] == "budgets.set"]
    assert budget["after"]["scope_value"] == "(erased)" and budget["after"]["daily_usd"] == "3"
    assert client.get("/api/v1/audit?since=2999-01-01", headers=as_admin).get_json() == []


def test_an_erase_takes_out_its_subject_only_where_an_entry_names_that_subject(migrated_home):
    """A team and a key named like the erased customer keep their names in the trail; the customer's
    budget scope loses it. An erased key's own entries lose its id and its name (a person's, often)."""
    home = migrated_home
    run_cli(home, "teams", "create", "acme-person")
    same = json.loads(run_cli(home, "keys", "create", "--name", "acme-person", "--team", "acme-person", "--json"))
    run_cli(home, "budgets", "set", "--scope", "customer:acme-person", "--all-keys", "--daily", "3")
    alice = json.loads(run_cli(home, "keys", "create", "--name", "alice-laptop", "--plan", "pro", "--json"))
    run_cli(home, "gdpr", "delete", "--customer", "acme-person", "--yes")
    run_cli(home, "gdpr", "delete", "--key", str(alice["id"]), "--yes")
    made = {(e["action"], e["target"]): (e["before"], e["after"]) for e in trail(home)}
    assert made[("teams.create", "team:acme-person")] == (None, {"name": "acme-person"})
    assert made[("keys.create", f"key:{same['id']}")][1] == {"name": "acme-person", "plan": "enterprise",
                                                            "team": "acme-person"}
    [budget] = [after for (action, _), (_, after) in made.items() if action == "budgets.set"]
    assert (budget["scope"], budget["scope_value"], budget["daily_usd"]) == ("customer", "(erased)", "3")
    assert made[("keys.create", "key:(erased)")] == (None, {"name": "(erased)", "plan": "pro", "team": None})
    assert "alice-laptop" not in json.dumps(trail(home))


def test_no_secret_reaches_the_trail(migrated_home, tmp_path):
    """Probe: admin tokens and keys (nor their hashes), a webhook URL with its token, an SMTP host: none
    is in the trail's before/after values, read by the CLI or the API; a key (not an admin) reading
    the trail is a 403 that names no entry."""
    from addon.core.keys import hash_key
    home = migrated_home
    admin = json.loads(run_cli(home, "admin", "create-token", "--name", "ops", "--json"))
    spare = json.loads(run_cli(home, "admin", "create-token", "--name", "spare", "--json"))
    run_cli(home, "admin", "revoke-token", str(spare["id"]))
    key = json.loads(run_cli(home, "keys", "create", "--name", "backend", "--json"))
    run_cli(home, "keys", "revoke", str(key["id"]))
    hook = "https://hooks.slack.com/services/T0SECRET/B0SECRET/xoxSECRETTOKEN"
    alerts = tmp_path / "alerts.toml"
    alerts.write_text(f'[[channel]]\nname = "slack"\ntype = "slack"\nurl = "{hook}"\n\n'
                      '[[channel]]\nname = "mail"\ntype = "email"\nhost = "smtp.internal.example"\nport = 587\n'
                      'security = "starttls"\nfrom = "a@example.com"\nto = ["ops@example.com"]\n'
                      'password_env = "SMTP_PASSWORD"\n', encoding="utf-8")
    run_cli(home, "alerts", "import", str(alerts))
    client = create_app(home, {"TESTING": True}).test_client()
    other = json.loads(run_cli(home, "keys", "create", "--name", "reader", "--json"))
    refused = client.get("/api/v1/audit", headers={"Authorization": f"Bearer {other['key']}"})
    assert refused.status_code == 403 and "keys.create" not in refused.get_data(as_text=True)
    via_api = client.get("/api/v1/audit", headers={"Authorization": f"Bearer {admin['token']}"})
    text = json.dumps(trail(home)) + via_api.get_data(as_text=True)
    assert {"admin.create-token", "admin.revoke-token", "keys.create", "keys.revoke", "alerts.import"} <= {
        e["action"] for e in trail(home)}
    for secret in (admin["token"], spare["token"], key["key"], hash_key(admin["token"]), hash_key(key["key"]),
                   hash_key(spare["token"]), hook, "xoxSECRETTOKEN", "smtp.internal.example"):
        assert secret not in text
