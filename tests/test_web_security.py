"""Findings 7 and 10 of the hardening issue: sign-in, sessions and what every response carries.

The app runs over a real DuckDB file through Flask's test client (the browser-level checks of
the same page are in test_web_page.py).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from cli.main import cli
from web import auth, create_app

from .helpers import free_port, run_cli


@pytest.fixture
def home(migrated_home):
    return migrated_home


@pytest.fixture
def admin_token(home):
    return json.loads(run_cli(home, "admin", "create-token", "--name", "ops", "--json"))


@pytest.fixture
def client(home, admin_token):
    return create_app(home).test_client()


def _csrf(client) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)


def _sign_in(client, secret: str, next_path: str = "/"):
    return client.post("/login", query_string={"next": next_path}, data={"secret": secret, "csrf": _csrf(client)})


@pytest.mark.parametrize("target", ["/\t/evil.example", "//evil.example", "/\\evil.example", "https://evil.example",
                                    "/\n/evil.example", "evil.example"])
def test_sign_in_never_redirects_to_another_host(client, admin_token, target):
    response = _sign_in(client, admin_token["token"], target)
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_sign_in_redirects_to_our_own_path(client, admin_token):
    response = _sign_in(client, admin_token["token"], "/?range=7d&model=gpt-4o")
    assert response.headers["Location"] == "/?range=7d&model=gpt-4o"


def test_a_signed_out_cookie_is_refused_even_if_it_was_kept(client, home, admin_token):
    _sign_in(client, admin_token["token"])
    kept = client.get_cookie("aispendtrack_session").value
    assert client.get("/api/v1/report").status_code == 200
    page = client.get("/").get_data(as_text=True)
    client.post("/logout", data={"csrf": re.search(r'name="csrf" value="([^"]+)"', page).group(1)})
    thief = create_app(home).test_client()
    thief.set_cookie("aispendtrack_session", kept)
    assert thief.get("/api/v1/report").status_code == 401


def test_sessions_expire_on_the_server(client, admin_token, monkeypatch):
    monkeypatch.setattr(auth, "SESSION_LIFETIME", dt.timedelta(seconds=-1))
    _sign_in(client, admin_token["token"])
    assert client.get("/api/v1/report").status_code == 401


def test_sign_in_and_sign_out_need_the_forms_csrf_token(client, admin_token):
    refused = client.post("/login", data={"secret": admin_token["token"]})
    assert refused.status_code == 400 and "form expired" in refused.get_data(as_text=True)
    assert client.get("/api/v1/report").status_code == 401
    _sign_in(client, admin_token["token"])
    assert client.post("/logout").status_code == 400  # a forged sign-out is refused...
    assert client.get("/api/v1/report").status_code == 200  # ...and the session goes on
    real = _csrf(client)
    for forged in ("", real[:-1], real + "x"):
        assert client.post("/logout", data={"csrf": forged}).status_code == 400, forged
    assert client.get("/api/v1/report").status_code == 200
    assert client.post("/logout", data={"csrf": real}).status_code == 302
    assert client.get("/api/v1/report").status_code == 401


def test_a_csrf_token_that_is_not_ascii_is_refused_as_any_wrong_one(client, admin_token):
    """hmac.compare_digest raises TypeError on a non-ASCII str: that was a 500 for anyone who sent one."""
    refused = client.post("/login", data={"secret": admin_token["token"], "csrf": "été"})
    assert refused.status_code == 400 and "form expired" in refused.get_data(as_text=True)
    _sign_in(client, admin_token["token"])
    assert client.post("/logout", data={"csrf": _csrf(client) + "é"}).status_code == 400
    assert client.get("/api/v1/report").status_code == 200  # still signed in


@pytest.mark.parametrize("authorization", ["Basic {key}", "Token {key}", "{key}", "Bearer", "Bearer {key}x",
                                           "Bearer ask_{key}", "Bearer sk-proj-not-ours"])
def test_the_api_reads_a_key_only_from_a_bearer_authorization(client, home, authorization):
    key = json.loads(run_cli(home, "keys", "create", "--name", "app", "--json"))["key"]
    assert client.get("/api/v1/calls", headers={"Authorization": f"bearer  {key} "}).status_code == 200
    refused = client.get("/api/v1/calls", headers={"Authorization": authorization.format(key=key)})
    assert refused.status_code == 401 and "Authorization: Bearer" in refused.get_json()["error"]["message"]


def test_a_post_from_another_site_is_refused(client, admin_token):
    response = client.post("/login", headers={"Origin": "https://evil.example"},
                           data={"secret": admin_token["token"], "csrf": _csrf(client)})
    assert response.status_code == 403 and "evil.example" in response.json["error"]["message"]


def test_every_response_carries_the_security_headers(client, admin_token):
    for response in (client.get("/login"), client.get("/api/v1/report"),
                     client.get("/api/v1/report", headers={"Authorization": f"Bearer {admin_token['token']}"})):
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_session_cookie_is_secure_over_tls(home, admin_token):
    client = create_app(home).test_client()
    csrf = re.search(r'name="csrf" value="([^"]+)"',
                     client.get("/login", base_url="https://localhost").get_data(as_text=True)).group(1)
    response = client.post("/login", base_url="https://localhost", data={"secret": admin_token["token"], "csrf": csrf})
    assert "Secure" in response.headers["Set-Cookie"] and "HttpOnly" in response.headers["Set-Cookie"]
    plain = create_app(home).test_client().get("/login")
    assert "Secure" not in plain.headers["Set-Cookie"]


def test_admin_tokens_can_be_listed_and_revoked_and_their_sessions_end(client, home, admin_token):
    _sign_in(client, admin_token["token"])
    listed = json.loads(run_cli(home, "admin", "list-tokens", "--json"))
    assert [(t["id"], t["name"], t["status"]) for t in listed] == [(admin_token["id"], "ops", "active")]
    assert "token_hash" not in listed[0]
    out = run_cli(home, "admin", "revoke-token", str(admin_token["id"]))
    assert f"Revoked admin token {admin_token['id']}; 1 page session(s) ended." in out
    assert client.get("/api/v1/report").status_code == 401
    bearer = {"Authorization": f"Bearer {admin_token['token']}"}
    assert client.get("/api/v1/report", headers=bearer).status_code == 401
    assert json.loads(run_cli(home, "admin", "list-tokens", "--json"))[0]["status"] == "revoked"


def test_a_revoked_key_can_no_longer_read_the_api_nor_keep_its_session(client, home):
    key = json.loads(run_cli(home, "keys", "create", "--name", "leaving", "--json"))
    bearer = {"Authorization": f"Bearer {key['key']}"}
    assert client.get("/api/v1/calls", headers=bearer).status_code == 200
    _sign_in(client, key["key"])
    assert client.get("/api/v1/report").status_code == 200
    run_cli(home, "keys", "revoke", str(key["id"]))
    for path in ("/api/v1/calls", "/api/v1/report", "/api/v1/export?format=json", "/api/v1/budgets"):
        refused = client.get(path, headers=bearer)
        assert refused.status_code == 401 and "Authorization: Bearer" in refused.get_json()["error"]["message"]
        assert client.get(path).status_code == 401, path  # nor through the page's session


def test_the_data_files_are_readable_by_their_owner_only(home, admin_token):
    from addon.core import home as home_dir
    create_app(home)
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    for path in [home_dir.db_path(home), *home.glob("web-secret")]:
        assert oct(path.stat().st_mode & 0o777) == "0o600", path


def test_a_large_request_body_is_refused_before_it_is_read(client, admin_token):
    response = client.post("/api/v1/purge", data=b"x" * (1024 * 1024), content_type="application/json",
                           headers={"Authorization": f"Bearer {admin_token['token']}"})
    assert response.status_code == 413
    assert response.get_json()["error"] == {"code": "too_large",
                                            "message": "The body is over 64 KiB; no endpoint takes one that big."}


@pytest.mark.parametrize(("body", "said"), [
    ('{"dry_run": true, "dry_run": false, "older_than_days": 36500}', "The field 'dry_run' is given twice"),
    ("[" * 12000 + "]" * 12000, "cannot read (a number too long, or nested too deep)"),
    ('{"older_than_days": ' + "9" * 5000 + "}", "cannot read (a number too long, or nested too deep)"),
    ("{'dry_run': true}", "The body is not JSON"),
    (b'{"dry_run": "\xff"}', "The body is not JSON"),  # not UTF-8: read as "nested too deep"
])
def test_a_body_the_purge_cannot_take_is_a_400_in_json_and_purges_nothing(client, admin_token, body, said):
    # A duplicated dry_run ran a real purge (the last one won); nesting thousands deep was an HTML 500.
    response = client.post("/api/v1/purge", data=body, content_type="application/json",
                           headers={"Authorization": f"Bearer {admin_token['token']}"})
    assert response.status_code == 400 and said in response.get_json()["error"]["message"]
    refused = client.post("/api/v1/gdpr/delete", data='{"customer": null, "key": null}',
                          content_type="application/json", headers={"Authorization": f"Bearer {admin_token['token']}"})
    assert refused.get_json()["error"]["message"] == "key must be a key id (a JSON number), got null."


def test_a_request_that_fails_unexpectedly_is_a_500_in_json_without_a_traceback(client, admin_token, monkeypatch):
    from addon.core.store import reports as report_rows

    def broken(*args, **kwargs):
        raise RuntimeError("a bug with /secret/path in its text")
    monkeypatch.setattr(report_rows, "total", broken)
    response = client.get("/api/v1/report/total", headers={"Authorization": f"Bearer {admin_token['token']}"})
    assert response.status_code == 500 and response.get_json()["error"] == {
        "code": "internal_error", "message": "The request failed on the server; the server's log says why."}
    assert b"secret" not in response.data


def _web_server(home, tmp_path, *args: str):
    """``aispendtrack web`` in its own process, serving on 127.0.0.1."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), "web", "--port", str(port), *args],
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"web-{port}.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/login", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError((tmp_path / f"web-{port}.log").read_text())


def _forwarded_sign_in(url: str, secret: str, origin: str | None = None) -> httpx.Response:
    """Sign in as a browser behind a TLS-terminating proxy would (it forwards X-Forwarded-Proto)."""
    forwarded = {"X-Forwarded-Proto": "https"}
    form = httpx.get(f"{url}/login", headers=forwarded, timeout=5)
    cookie = form.headers["set-cookie"].split(";")[0]  # sent back by hand: a Secure cookie never goes over http
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    return httpx.post(f"{url}/login", data={"secret": secret, "csrf": csrf}, timeout=5,
                      headers={**forwarded, "Cookie": cookie, **({"Origin": origin} if origin else {})})


@pytest.mark.parametrize("trusted,secure", [(("--trusted-proxy", "127.0.0.1"), True),
                                            (("--trusted-proxy", "10.9.9.0/24"), False), ((), False)])
def test_the_session_cookie_is_secure_behind_a_trusted_tls_proxy_only(home, admin_token, tmp_path, trusted, secure):
    process, url = _web_server(home, tmp_path, *trusted)
    try:
        signed_in = _forwarded_sign_in(url, admin_token["token"])
        assert signed_in.status_code == 302, signed_in.text
        set_cookie = signed_in.headers["set-cookie"]
        assert set_cookie.startswith("aispendtrack_session=") and "HttpOnly" in set_cookie
        assert ("; Secure" in set_cookie) is secure, set_cookie
        # A browser sends the page's own origin, https:// behind the proxy: ours only when the
        # forwarded scheme is believed.
        from_browser = _forwarded_sign_in(url, admin_token["token"], origin=url.replace("http://", "https://"))
        assert from_browser.status_code == (302 if secure else 403), from_browser.text
    finally:
        process.terminate()
        process.wait(10)


def test_a_trusted_proxy_that_is_no_address_is_refused(home):
    result = CliRunner().invoke(cli, ["--home", str(home), "web", "--trusted-proxy", "proxy.internal"])
    assert result.exit_code == 2 and "'proxy.internal' is not an IP address or network" in result.output
