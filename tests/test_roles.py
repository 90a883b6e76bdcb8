"""Roles decided in one place (web/auth.py), in-process over a real DuckDB file: what each principal
may see and change, what a single sign-on session is worth as sso.toml stands now, and what the
page's header says. tests/test_sso.py checks the same through a real provider and a browser; these
are fast, so the mutation selection runs them."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from addon.core import home as home_dir
from addon.core.reports import Selection
from addon.core.store import sso_users, writing
from web import auth
from web.sso_settings import SsoSettings

SSO = SsoSettings("https://idp.example", "aispendtrack", "secret", roles={"spend-admins": "admin",
                                                                         "finance": "viewer"},
                  teams={"team-search": "search", "team-ads": "ads"})


def signed_in(home, sub: str, role: str | None, teams: tuple[str, ...] = (), name: str | None = "Ann Lee",
              email: str | None = "ann@example.com", groups: tuple[str, ...] | None = None) -> str:
    """A session of a user who signed in with ``groups`` (default: those SSO maps to ``role`` and
    ``teams``, a team it does not map as "team-NAME"), given ``role`` and ``teams`` by them."""
    if groups is None:
        groups = tuple(g for g, r in SSO.roles.items() if r == role) + tuple(
            next((g for g, t in SSO.teams.items() if t == team), f"team-{team}") for team in teams)
    db = home_dir.db_path(home)
    with writing(db) as con:
        sso_users.signed_in(con, sub, name, email, role, teams, groups, dt.datetime.now(dt.UTC))
    return auth.start_session(db, "sso", sub)


def test_an_sso_session_is_its_users_role_teams_and_name(migrated_home):
    session = signed_in(migrated_home, "u-1", "team", ("ads", "search"))
    found = auth.session_principal(home_dir.db_path(migrated_home), session, SSO)
    assert (found.key_id, found.admin_id, found.role, found.teams, found.sub) == (None, None, "team",
                                                                                 ("ads", "search"), "u-1")
    assert (found.shown_as, found.email, found.actor) == ("Ann Lee", "ann@example.com", "sso:u-1 (ann@example.com)")
    assert found.describe() == "Ann Lee (team ads, search)"
    assert not found.is_admin and not found.sees_all
    nameless = signed_in(migrated_home, "u-2", "viewer", name=None)
    viewer = auth.session_principal(home_dir.db_path(migrated_home), nameless, SSO)
    assert (viewer.shown_as, viewer.describe(), viewer.sees_all) == (
        "ann@example.com", "ann@example.com (viewer: all spend, read-only)", True)
    bare = signed_in(migrated_home, "u-3", "admin", name=None, email=None)
    admin = auth.session_principal(home_dir.db_path(migrated_home), bare, SSO)
    assert (admin.describe(), admin.actor, admin.is_admin) == ("u-3 (admin: all keys)", "sso:u-3", True)
    assert auth.session_principal(home_dir.db_path(migrated_home), "no-such-session", SSO) is None


def test_an_sso_session_is_worth_what_sso_toml_gives_now(migrated_home):
    db = home_dir.db_path(migrated_home)
    team = signed_in(migrated_home, "t", "team", ("search", "gone"))
    viewer = signed_in(migrated_home, "v", "viewer")
    assert auth.session_principal(db, team, None) is None  # single sign-on turned off
    assert auth.session_principal(db, team, SSO).teams == ("search",)  # "gone" is mapped no more
    only_ads = SsoSettings("https://idp.example", "aispendtrack", "s", roles={}, teams={"x": "ads"})
    dropped = auth.session_principal(db, team, only_ads)
    assert (dropped.role, dropped.teams, dropped.describe()) == (None, (), "Ann Lee (no role)")
    assert auth.session_principal(db, viewer, SSO).role == "viewer"
    unmapped = auth.session_principal(db, viewer, only_ads)
    assert (unmapped.role, unmapped.teams) == (None, ())
    assert auth.refusal(unmapped, "GET") == auth.NO_ROLE


def test_an_sso_users_name_is_named_in_the_audit_trail_without_its_control_characters(migrated_home):
    """A display name (a profile field users edit) with a CR and terminal escapes, and no e-mail:
    `aispendtrack audit` printed it raw, so a terminal showed a forged row in its place."""
    forged = "Bob\r\x1b[2K2026-01-01 00:00:00  admin:1  keys.revoke"
    session = signed_in(migrated_home, "b", "admin", name=forged, email=None)
    found = auth.session_principal(home_dir.db_path(migrated_home), session, SSO)
    assert found.actor == "sso:b (Bob\\x0d\\x1b[2K2026-01-01 00:00:00  admin:1  keys.revoke)"


def test_a_groups_mapping_taken_out_takes_its_role_even_where_another_group_gives_the_same(migrated_home):
    """An operator takes `contractors` out of sso.toml; `spend-admins` still maps to admin, and
    `team-search-old` to search beside `team-search`: the sessions of users who had them only through
    the group taken out lose them at once (they kept them until the session ended, up to 12 hours)."""
    db = home_dir.db_path(migrated_home)
    contractor = signed_in(migrated_home, "c", "admin", groups=("contractors",))
    searcher = signed_in(migrated_home, "s", "team", ("search",), groups=("team-search-old",))
    both = signed_in(migrated_home, "b", "admin", groups=("contractors", "spend-admins"))
    before = SsoSettings("https://idp.example", "aispendtrack", "s",
                         roles={"contractors": "admin", "spend-admins": "admin"},
                         teams={"team-search": "search", "team-search-old": "search"})
    after = SsoSettings("https://idp.example", "aispendtrack", "s", roles={"spend-admins": "admin"},
                        teams={"team-search": "search"})
    assert [auth.session_principal(db, s, before).role for s in (contractor, searcher, both)] == ["admin", "team",
                                                                                                "admin"]
    lost = auth.session_principal(db, contractor, after)
    assert (lost.role, auth.refusal(lost, "GET")) == (None, auth.NO_ROLE)
    assert (auth.session_principal(db, searcher, after).role, auth.session_principal(db, searcher, after).teams) == (
        None, ())
    assert auth.session_principal(db, both, after).role == "admin"  # still given by spend-admins
    # Users who signed in before the groups were kept: judged by the role's and teams' names, as before.
    legacy = signed_in(migrated_home, "l", "team", ("search", "gone"))
    with writing(db) as con:
        con.execute("UPDATE sso_users SET groups = NULL WHERE sub IN ('c', 'l')")
    assert auth.session_principal(db, contractor, after).role == "admin"
    assert auth.session_principal(db, contractor, SsoSettings("https://idp.example", "a", "s")).role is None
    kept = auth.session_principal(db, legacy, after)
    assert (kept.role, kept.teams) == ("team", ("search",))  # "gone" is mapped no more
    lost_team = auth.session_principal(db, legacy, SsoSettings("https://idp.example", "a", "s", teams={"x": "ads"}))
    assert (lost_team.role, lost_team.teams) == (None, ())


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT", "PATCH"])
def test_only_admins_and_keys_pass_the_gate_for_a_change(method):
    viewer = auth.Principal(None, role="viewer", sub="v")
    team = auth.Principal(None, role="team", teams=("search",), sub="t")
    assert auth.refusal(viewer, method) == ("Your role (viewer) may look but not change anything: ask an admin "
                                            "(docs/sso.md, roles).")
    assert auth.refusal(team, method).startswith("Your role (team) may look")
    assert auth.refusal(auth.Principal.admin_token(3), method) is None
    assert auth.refusal(auth.Principal.key(4), method) is None
    for reading in ("GET", "HEAD", "OPTIONS"):
        assert auth.refusal(viewer, reading) is None and auth.refusal(team, reading) is None
    assert auth.refusal(auth.Principal(None, role=None, sub="n"), "GET") == auth.NO_ROLE


def test_each_principal_sees_its_own_scope_and_asking_for_more_is_refused():
    everything = Selection()
    assert auth.Principal.admin_token(1).scope(everything) == everything
    assert auth.Principal(None, role="viewer", sub="v").scope(everything) == everything
    assert auth.Principal.key(7).scope(everything).key_id == 7
    team = auth.Principal(None, role="team", teams=("search",), sub="t")
    assert team.scope(everything).teams == ("search",)
    with pytest.raises(PermissionError, match="not team 'ads'"):
        team.scope(Selection(team="ads"))
    with pytest.raises(PermissionError, match="no role"):
        auth.Principal(None, role=None, sub="n").scope(everything)
    with pytest.raises(PermissionError):
        auth.Principal(None, role="key").scope(everything)  # a key role without a key sees nothing
    assert auth.Principal.admin_token(1).describe() == "admin: all keys"
    assert auth.Principal.key(7).describe() == "key 7"
    assert (auth.Principal.admin_token(5).actor, auth.Principal.key(7).actor) == ("admin:5", "key:7")


def test_a_team_user_sees_its_teams_budgets_with_their_spend_and_no_other_teams_or_tags(migrated_home):
    """/api/v1/budgets for a single sign-on user of team search, over the page's session: its team's
    budget with the spend, the budget over all calls without it (other teams' spend is in it), and
    neither team ads' budget nor a customer's that happens to be called "search"."""
    from addon.core.store import calls as call_rows
    from web import create_app

    from .helpers import call_row, run_cli
    home = migrated_home
    for team in ("search", "ads"):
        run_cli(home, "teams", "create", team)
    key = json.loads(run_cli(home, "keys", "create", "--name", "s", "--team", "search", "--json"))["id"]
    for scope, more in (("team:search", ()), ("team:ads", ()), ("customer:search", ("--all-keys",)), ("all", ())):
        run_cli(home, "budgets", "set", "--scope", scope, *more, "--monthly", "70")
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [call_row(1, ts=dt.datetime.now(dt.UTC), key_id=key, customer_id="search",
                                        cost_usd=Decimal("3"))])
    client = create_app(home, {"SSO": SSO}).test_client()
    with client.session_transaction() as cookie:
        cookie["sid"] = signed_in(home, "t", "team", ("search",))
    answer = client.get("/api/v1/budgets")
    assert answer.status_code == 200, answer.get_json()
    assert sorted((b["scope"], b["scope_value"], b["spent_this_month_usd"]) for b in answer.get_json()) == [
        ("all", None, None), ("team", "search", 3)]
