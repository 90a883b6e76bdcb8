"""Single sign-on for the page and roles (web/sso.py, web/auth.py) against a real OpenID provider:
the oidc-provider package (tests/js/oidc_provider.mjs) on 127.0.0.1, headless Chromium as the browser.

The provider's issuer is http://localhost:PORT and the page is http://127.0.0.1:PORT: two sites, so the
browser's SameSite rules are those of a real deployment (the page's Strict cookie is not sent on the
way back from the provider)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from addon.core import home as home_dir
from addon.core.store import calls as call_rows
from addon.core.store import writing

from .helpers import CHROMIUM, call_row, free_port, invoke, run_cli, until

playwright_api = pytest.importorskip("playwright.sync_api")
JS = Path(__file__).parent / "js"
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)"),
    pytest.mark.skipif(not (JS / "node_modules" / "oidc-provider").exists(), reason="needs `npm ci --prefix tests/js`"),
]
SECRET = "client-secret-for-tests"
SECRET_ENV = "AISPENDTRACK_TEST_SSO_SECRET"
ACCOUNTS = {
    "alice": {"email": "alice@example.com", "name": "Alice Admin", "groups": ["spend-admins", "staff"]},
    "victor": {"email": "victor@example.com", "name": "Victor Viewer", "groups": ["finance"]},
    "tess": {"email": "tess@example.com", "name": "Tess Search", "groups": ["team-search"]},
    "nobody": {"email": "nobody@example.com", "name": "No Body", "groups": ["interns"]},
    "mallory": {"email": "mallory@example.com", "name": "Mallory", "groups": ["spend-admins"]},
    "dora": {"email": "dora@example.com", "name": "Dora Demoted", "groups": ["finance"]},
    "eve": {"email": "eve@example.com", "name": "Eve", "groups": ["interns"]},
    "hank": {"email": "hank@example.com", "name": "Hank", "groups": ["interns"]},
    "ivan": {"email": "ivan@example.com", "name": "Ivan", "groups": ["interns"]},
}
FORGED = {"eve": "none", "hank": "hs256", "ivan": "issuer"}  # tests/js/oidc_provider.mjs: how each is forged
SSO_TOML = """
[sso]
issuer = "{issuer}"
client_id = "aispendtrack"
client_secret_env = "{env}"
groups_claim = "groups"
scopes = "openid email profile groups"
[sso.roles]
"spend-admins" = "admin"
"finance" = "viewer"
[sso.teams]
"team-search" = "search"
"""


def _ago(hours: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)


class Provider:
    def __init__(self, tmp: Path, web_port: int):
        self.port, self.web_port = free_port(), web_port
        self.issuer = f"http://localhost:{self.port}"
        self.config = tmp / "idp.json"
        self.accounts = json.loads(json.dumps(ACCOUNTS))
        self.write()
        self.log = tmp / "idp.log"
        self.process = subprocess.Popen(["node", str(JS / "oidc_provider.mjs"), str(self.config)],
                                        stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        until(lambda: self._up(), 20, f"the OpenID provider did not start: {self.log.read_text()}")

    def write(self) -> None:
        self.config.write_text(json.dumps({
            "port": self.port, "issuer": self.issuer, "accounts": self.accounts, "wrong_audience": ["mallory"],
            "forged": FORGED,
            "client": {"client_id": "aispendtrack", "client_secret": SECRET,
                       "redirect_uris": [f"http://127.0.0.1:{self.web_port}/sso/callback"]}}))

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.issuer}/.well-known/openid-configuration").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _serve(home: Path, port: int | None = None) -> tuple[str, Any]:
    """The web app on 127.0.0.1 in a thread of this process (the test's environment holds the secret)."""
    from web import create_app
    from web.server import WebServer

    port = port or free_port()
    server = WebServer("127.0.0.1", port, create_app(home))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", server


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sso")
    home = tmp / "home"
    home.mkdir()
    run_cli(home, "teams", "create", "search")
    run_cli(home, "teams", "create", "platform")
    search = json.loads(run_cli(home, "keys", "create", "--name", "search-bot", "--team", "search", "--json"))
    platform = json.loads(run_cli(home, "keys", "create", "--name", "platform-bot", "--team", "platform", "--json"))
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [
            call_row(1, ts=_ago(3), key_id=search["id"], customer_id="search-customer", cost_usd=Decimal("1.25")),
            call_row(2, ts=_ago(2), key_id=platform["id"], customer_id="platform-customer", cost_usd=Decimal("7.50")),
            call_row(3, ts=_ago(1), key_id=platform["id"], customer_id="platform-customer", cost_usd=Decimal("2.00")),
        ])
    run_cli(home, "budgets", "set", "--scope", "team:search", "--monthly", "100")
    run_cli(home, "budgets", "set", "--scope", "team:platform", "--monthly", "200")
    os.environ[SECRET_ENV] = SECRET
    web_port = free_port()
    idp = Provider(tmp, web_port)
    (home / "sso.toml").write_text(SSO_TOML.format(issuer=idp.issuer, env=SECRET_ENV))
    url, server = _serve(home, web_port)  # the port the provider's client was registered with
    yield {"url": url, "home": home, "idp": idp, "search_key": search,
           "platform_key": platform}
    server.close()
    idp.stop()
    os.environ.pop(SECRET_ENV, None)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def sso_sign_in(page, site, user: str, expect_page: bool = True, started: bool = False) -> None:
    """Through the sign-in page's link, the provider's own login form, and back."""
    if not started:
        page.goto(site["url"] + "/")
        page.click("#sso-sign-in")
        page.wait_for_selector("input[name=login]")
    assert page.url.startswith(site["idp"].issuer), page.url
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", "anything")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if page.url.startswith(site["idp"].issuer) and page.locator("text=Continue").count():
        page.click("text=Continue")  # the provider's own consent page
    if expect_page:
        try:
            page.wait_for_selector(".who", timeout=20_000)
        except playwright_api.TimeoutError:
            raise AssertionError(f"not signed in: at {page.url}: {page.inner_text('body')[:500]}") from None


def api(page, site, path: str, method: str = "GET"):
    """The API with the page's own session cookie, as the page's scripts call it."""
    return page.request.fetch(site["url"] + path, method=method, headers={"Origin": site["url"]})


def test_sign_in_names_the_user_and_sign_out_ends_the_session(page, site):
    sso_sign_in(page, site, "alice")
    assert page.url.rstrip("?") == site["url"] + "/"
    assert "Alice Admin (admin: all keys)" in page.inner_text(".who")
    assert api(page, site, "/api/v1/report/total").json()["cost_usd"] == 10.75
    cookie = next(c for c in page.context.cookies() if c["name"] == "aispendtrack_session")
    page.click("text=Sign out")
    page.wait_for_selector("#secret")
    # The old cookie, replayed, is worth nothing: the session ended on the server.
    answer = httpx.get(site["url"] + "/api/v1/report/total", cookies={cookie["name"]: cookie["value"]})
    assert answer.status_code == 401


def test_a_team_user_sees_only_its_teams_calls_on_the_page_and_in_the_api(page, site):
    sso_sign_in(page, site, "tess")
    assert "Tess Search (team search)" in page.inner_text(".who")
    until(lambda: "search-customer" in page.inner_text("#by-customer"), 20, "the page did not draw")
    assert "platform-customer" not in page.inner_text("#by-customer")
    assert "platform" not in page.inner_text("#by-team")
    assert api(page, site, "/api/v1/report/total").json()["cost_usd"] == 1.25
    calls = api(page, site, "/api/v1/calls").json()["calls"]
    assert [c["customer_id"] for c in calls] == ["search-customer"]
    other = api(page, site, "/api/v1/calls?team=platform")
    assert other.status == 403 and "team search only" in other.json()["error"]["message"]
    other_key = api(page, site, f"/api/v1/calls?key={site['platform_key']['id']}").json()["calls"]
    assert other_key == []
    export = api(page, site, "/api/v1/export?format=csv").text()
    assert "search-customer" in export and "platform-customer" not in export
    budgets = api(page, site, "/api/v1/budgets").json()
    assert [b["scope_value"] for b in budgets] == ["search"]


def test_a_viewer_sees_all_spend_and_is_refused_every_change(page, site):
    sso_sign_in(page, site, "victor")
    assert "Victor Viewer (viewer" in page.inner_text(".who")
    assert api(page, site, "/api/v1/report/total").json()["cost_usd"] == 10.75
    for path in ("/api/v1/purge", "/api/v1/gdpr/delete?customer=platform-customer"):
        refused = api(page, site, path, method="POST")
        assert refused.status == 403, path
        assert "Your role (viewer) may look but not change anything" in refused.json()["error"]["message"]
    assert api(page, site, "/api/v1/report/total").json()["cost_usd"] == 10.75  # nothing was deleted


def test_a_user_whose_groups_map_to_no_role_is_refused_with_a_message(page, site):
    sso_sign_in(page, site, "nobody", expect_page=False)
    page.wait_for_selector("#sso-error")
    assert "none of your groups is mapped to one" in page.inner_text("#sso-error")
    assert api(page, site, "/api/v1/report/total").status == 401


def test_a_user_removed_from_the_group_loses_the_role_at_the_next_sign_in(browser, site):
    idp = site["idp"]
    first = browser.new_context()
    page = first.new_page()
    sso_sign_in(page, site, "dora")
    assert api(page, site, "/api/v1/report/total").status == 200
    idp.accounts["dora"]["groups"] = ["interns"]
    idp.write()
    second = browser.new_context().new_page()
    sso_sign_in(second, site, "dora", expect_page=False)
    second.wait_for_selector("#sso-error")
    # Her earlier session, in the other browser, ended with it.
    assert api(page, site, "/api/v1/report/total").status == 401
    first.close()


def test_an_id_token_with_another_audience_is_refused(page, site):
    sso_sign_in(page, site, "mallory", expect_page=False)
    page.wait_for_selector("#sso-error")
    assert "ID token from the identity provider was refused" in page.inner_text("#sso-error")
    assert "aud" in page.inner_text("#sso-error")
    assert api(page, site, "/api/v1/report/total").status == 401


@pytest.mark.parametrize("user", FORGED)
def test_a_forged_id_token_claiming_to_be_an_admin_is_refused(page, site, user):
    """An unsigned (alg none) token, one signed HS256 with the provider's public key, one naming another
    issuer: each claims the admin alice's sub and groups, and the provider's discovery lists none and HS256."""
    sso_sign_in(page, site, user, expect_page=False)
    page.wait_for_selector("#sso-error, .who")
    assert page.locator(".who").count() == 0, f"signed in as {page.inner_text('.who')}"
    assert "ID token from the identity provider was refused" in page.inner_text("#sso-error")
    assert "Traceback" not in page.content()
    assert api(page, site, "/api/v1/report/total").status == 401


def test_a_replayed_or_forged_state_is_refused(page, browser, site):
    callbacks: list[str] = []
    page.on("request", lambda r: callbacks.append(r.url) if "/sso/callback" in r.url else None)
    sso_sign_in(page, site, "alice")
    assert callbacks
    page.goto(callbacks[0])  # the same answer from the provider, a second time
    assert "expired or was already used" in page.inner_text("#sso-error")
    # Another browser with a sign-in under way (its state in its cookie) given an answer with another state.
    other = browser.new_context().new_page()
    other.goto(site["url"] + "/login")
    other.click("#sso-sign-in")
    other.wait_for_selector("input[name=login]")
    other.goto(site["url"] + "/sso/callback?code=x&state=forged")
    assert "expired or was already used" in other.inner_text("#sso-error")
    other.context.close()


@pytest.mark.parametrize("query", ["code=x&state=%C3%A9t%C3%A9", "code=x&state=%FF%FE%80", "code=x&state=" + "s" * 6000,
                                   "code=x", "", "state=%00"])
def test_a_malformed_callback_gets_a_page_that_says_so_not_a_server_error(page, site, query):
    """With a sign-in under way (its state cookie set): a state that is not ASCII, not UTF-8, huge or missing."""
    page.goto(site["url"] + "/login")
    page.click("#sso-sign-in")
    page.wait_for_selector("input[name=login]")
    answer = page.goto(site["url"] + "/sso/callback?" + query)
    assert answer is not None and answer.status == 400, (answer and answer.status, page.content()[:300])
    assert "expired or was already used" in page.inner_text("#sso-error")


def test_an_error_callback_without_our_state_shows_none_of_its_words(page, site):
    """Anyone can link to /sso/callback?error=...: its text must not appear on this site's page as the provider's."""
    lure = "error=access_denied&error_description=Your+account+is+locked.+Call+555-0100+to+unlock+it"
    for started in (False, True):  # no sign-in under way; one under way, but the link has another state
        if started:
            page.goto(site["url"] + "/login")
            page.click("#sso-sign-in")
            page.wait_for_selector("input[name=login]")
        page.goto(site["url"] + "/sso/callback?" + lure + "&state=forged" * started)
        assert "expired or was already used" in page.inner_text("#sso-error")
        assert "555-0100" not in page.content()
    asked: list[str] = []  # the provider's own refusal comes with our state, and is shown
    page.on("request", lambda r: asked.extend(parse_qs(urlsplit(r.url).query).get("state", [])))
    page.goto(site["url"] + "/login")
    page.click("#sso-sign-in")
    page.wait_for_selector("input[name=login]")
    page.goto(site["url"] + f"/sso/callback?error=access_denied&state={asked[0]}")
    assert "The identity provider said: access_denied" in page.inner_text("#sso-error")


def test_a_callback_without_a_code_is_refused_with_a_page(page, site):
    asked: list[str] = []  # the provider's authorization URL, which carries the state
    page.on("request", lambda r: asked.extend(parse_qs(urlsplit(r.url).query).get("state", [])))
    page.goto(site["url"] + "/login")
    page.click("#sso-sign-in")
    page.wait_for_selector("input[name=login]")
    assert asked
    answer = page.goto(site["url"] + f"/sso/callback?state={asked[0]}")
    assert answer is not None and answer.status == 400
    assert "The identity provider refused the sign-in" in page.inner_text("#sso-error")
    assert api(page, site, "/api/v1/report/total").status == 401


def test_a_sign_in_finished_after_its_state_expired_is_refused(page, site, monkeypatch):
    import web.sso  # the module (the blueprint is web.sso.sign_on)

    monkeypatch.setattr(web.sso, "STATE_LIFETIME", dt.timedelta(seconds=1))
    page.goto(site["url"] + "/login")
    page.click("#sso-sign-in")
    page.wait_for_selector("input[name=login]")
    time.sleep(2.5)  # the user dawdles at the provider's form
    sso_sign_in(page, site, "alice", expect_page=False, started=True)
    page.wait_for_selector("#sso-error")
    assert "expired or was already used" in page.inner_text("#sso-error")
    assert api(page, site, "/api/v1/report/total").status == 401


def test_the_provider_down_gives_a_clear_page_and_keys_still_work(page, site, tmp_path):
    home = tmp_path / "down"
    home.mkdir()
    (home / "sso.toml").write_text(SSO_TOML.format(issuer=f"http://127.0.0.1:{free_port()}", env=SECRET_ENV))
    key = json.loads(run_cli(home, "keys", "create", "--name", "k", "--json"))["key"]
    url, server = _serve(home)
    try:
        page.goto(url + "/login")
        page.click("#sso-sign-in")
        assert "did not answer" in page.inner_text("#sso-error")
        assert "Traceback" not in page.content()
        answer = httpx.get(url + "/api/v1/report/total", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200
    finally:
        server.close()


def test_a_discovery_document_naming_no_issuer_text_gives_the_misconfigured_page(tmp_path, monkeypatch):
    """A provider whose discovery document names its issuer as a number (or not at all): a page that
    says so (502), where the sign-in was a server error."""
    from .price_data import PriceServer  # a server of one JSON document, whatever the path

    monkeypatch.setenv(SECRET_ENV, SECRET)
    home = tmp_path / "home"
    home.mkdir()
    with PriceServer(b"{}") as provider:
        (home / "sso.toml").write_text(SSO_TOML.format(issuer=provider.url.removesuffix("/data.json"), env=SECRET_ENV))
        url, server = _serve(home)
        try:
            for document in ({"issuer": 5}, {}):
                provider.serve(json.dumps(document).encode())
                answer = httpx.get(url + "/sso/login", timeout=10)
                assert answer.status_code == 502 and "names another issuer" in answer.text, answer.text[:300]
                assert "Traceback" not in answer.text
        finally:
            server.close()


@pytest.mark.parametrize("user", ["victor", "tess"])
def test_sessions_end_when_sso_is_turned_off_or_their_role_is_no_longer_mapped(page, site, user):
    """The same data directory served by apps whose sso.toml changed since the user signed in (each app
    reads it at its start): no [sso] at all, then the user's group no longer mapped."""
    import dataclasses

    from web import create_app
    from web.sso_settings import load

    sso_sign_in(page, site, user)
    cookie = next(c for c in page.context.cookies() if c["name"] == "aispendtrack_session")
    current = load(site["home"])
    assert current is not None

    def answer(settings) -> int:
        client = create_app(site["home"], {"SSO": settings}).test_client()
        client.set_cookie(cookie["name"], cookie["value"])
        return client.get("/api/v1/report/total").status_code

    assert answer(current) == 200  # the same settings: the session holds
    assert answer(None) == 401
    assert answer(dataclasses.replace(current, roles={"spend-admins": "admin"}, teams={})) == 403
    # Her group mapped to another team's name: her session has that team now (nothing of search's);
    # her group no longer mapped, though another group maps to search: nothing at all.
    assert answer(dataclasses.replace(current, teams={"team-search": "renamed-search"})) == 200
    assert answer(dataclasses.replace(current, teams={"team-other": "search"})) == (200 if user == "victor" else 403)


def test_an_admin_ends_one_users_sessions_at_once_by_e_mail(page, site):
    """A compromised account, disabled at the provider: its open sessions lasted 12 hours, and the only
    way to end them at once was to turn single sign-on off for everyone."""
    sso_sign_in(page, site, "victor")
    assert api(page, site, "/api/v1/report/total").status == 200
    said = run_cli(site["home"], "admin", "end-sso-sessions", "victor@example.com")
    # (other tests of this module signed victor in too: every one of his sessions ends)
    assert re.match(r"Ended \d+ page sessions? of victor@example\.com\. Disable them at the identity provider", said)
    assert api(page, site, "/api/v1/report/total").status == 401
    trail = json.loads(run_cli(site["home"], "audit", "--json"))
    assert [(e["action"], e["target"]) for e in trail if e["action"] == "admin.end-sso-sessions"] == [
        ("admin.end-sso-sessions", "sso:victor")]
    unknown = invoke(site["home"], "admin", "end-sso-sessions", "nobody-here@example.com")
    assert unknown.exit_code == 1 and unknown.output == (
        "Error: No single sign-on user with the e-mail or sub 'nobody-here@example.com' has signed in.\n")


def test_the_audit_trail_names_the_sso_user(page, site):
    sso_sign_in(page, site, "alice")
    answer = api(page, site, "/api/v1/gdpr/export?customer=search-customer")  # recorded in the audit trail
    assert answer.status == 200, answer.text()
    trail = api(page, site, "/api/v1/audit").json()
    assert [(e["action"], e["actor"]) for e in trail if e["action"] == "gdpr.export"] == [
        ("gdpr.export", "sso:alice (alice@example.com)")]


def test_the_client_secret_is_only_taken_from_the_environment(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from web.sso_settings import SsoSettingsError, load

    (tmp_path / "sso.toml").write_text('[sso]\nissuer = "https://idp.example"\nclient_id = "a"\n'
                                       'client_secret = "in-the-file"\n')
    with pytest.raises(SsoSettingsError, match="does not belong in a file"):
        load(tmp_path, {})
    (tmp_path / "sso.toml").write_text('[sso]\nissuer = "https://idp.example"\nclient_id = "a"\n'
                                       'client_secret_env = "MY_SSO_SECRET"\n')
    with pytest.raises(SsoSettingsError, match="MY_SSO_SECRET, which is not set"):
        load(tmp_path, {})
    settings = load(tmp_path, {"MY_SSO_SECRET": "hunter2-secret"})
    assert settings is not None and settings.client_secret == "hunter2-secret"
    assert "hunter2" not in repr(settings)
    # The web command says what is wrong, no traceback, before it serves anything.
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "web", "--port", str(free_port())], env={})
    assert result.exit_code == 1 and "MY_SSO_SECRET, which is not set" in result.output, result.output


def test_sso_users_and_their_sessions_live_in_postgresql_in_the_shared_mode(shared_env, tmp_path):
    """One replica signs a user in; another knows the session, its role and teams, and its end."""
    from addon.core.store import sessions as session_rows
    from addon.core.store import sso_users
    from web.auth import session_principal, start_session
    from web.sso_settings import parse

    settings = parse({"issuer": "https://idp.example", "client_id": "a", "teams": {"team-search": "search"}},
                     "test", {"AISPENDTRACK_SSO_CLIENT_SECRET": "x"})

    home, other = tmp_path / "replica-a", tmp_path / "replica-b"
    run_cli(home, "teams", "create", "search")
    db, other_db = home_dir.db_path(home), home_dir.db_path(other)
    now = dt.datetime.now(dt.UTC)
    with writing(db) as con:
        sso_users.signed_in(con, "sub-1", "Tess", "tess@example.com", "team", ("search",), ("team-search",), now)
    session_id = start_session(db, "sso", "sub-1")
    found = session_principal(other_db, session_id, settings)
    assert found is not None
    assert (found.role, found.teams, found.actor) == ("team", ("search",), "sso:sub-1 (tess@example.com)")
    with writing(db) as con:  # a later sign-in with no role, as the callback records it
        sso_users.signed_in(con, "sub-1", "Tess", "tess@example.com", None, (), (), now)
        session_rows.end_for(con, "sub-1")
    assert session_principal(other_db, session_id, settings) is None


def test_groups_give_the_strongest_role_and_every_team_mapped():
    from web.sso_settings import parse

    settings = parse({"issuer": "https://idp.example/", "client_id": "a",
                      "roles": {"ops": "admin", "finance": "viewer"},
                      "teams": {"team-search": "search", "team-ads": "ads"}}, "test", {
                          "AISPENDTRACK_SSO_CLIENT_SECRET": "x"})
    assert settings.issuer == "https://idp.example"
    assert settings.role_for(["team-search", "finance", "ops"]) == ("admin", ())
    assert settings.role_for(["team-search", "finance"]) == ("viewer", ())
    assert settings.role_for(["team-search", "team-ads", "interns"]) == ("team", ("ads", "search"))
    assert settings.role_for(["interns"]) == (None, ())
    with pytest.raises(ValueError, match="gives admin or viewer"):
        parse({"issuer": "https://idp.example", "client_id": "a", "roles": {"ops": "owner"}}, "test",
              {"AISPENDTRACK_SSO_CLIENT_SECRET": "x"})
    # A setting of the wrong type is refused with its name, at the start: a list as the groups claim
    # made every sign-in a server error, a number as the secret's variable a traceback.
    for name, value, said in (("groups_claim", ["groups"], "groups_claim must be a non-empty string, got ['groups']"),
                              ("groups_claim", 5, "groups_claim must be a non-empty string, got 5"),
                              ("client_secret_env", 5, "client_secret_env must be a non-empty string, got 5"),
                              ("scopes", ["openid"], "scopes must be a non-empty string, got ['openid']"),
                              ("redirect_uri", 1, "redirect_uri must be a URL (a string), got 1")):
        with pytest.raises(ValueError) as refused:
            parse({"issuer": "https://idp.example", "client_id": "a", name: value}, "sso.toml",
                  {"AISPENDTRACK_SSO_CLIENT_SECRET": "x"})
        assert str(refused.value) == f"sso.toml: [sso] {said}."
