"""Findings 4, 8 and 11 of the hardening issue on the web port: bounded connections, an access log
without query strings, and exports that never hold the database while a client is slow."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
import time

import httpx
import pytest

from addon.core import home as home_dir
from addon.core.store import calls as call_rows
from addon.core.store import synthetic, writing
from web import create_app, server

from .helpers import call_row, closed_by_peer, run_cli, until


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 10)
    monkeypatch.setattr(server, "REQUEST_TIMEOUT", 1.0)
    home = tmp_path / "home"
    token = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    web = server.WebServer("127.0.0.1", 0, create_app(home))
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{web.server_port}", "port": web.server_port, "token": token, "home": home,
           "server": web}
    web.shutdown()
    web.server_close()


def _connect(site) -> socket.socket:
    return socket.create_connection(("127.0.0.1", site["port"]), timeout=5)


def test_slow_and_surplus_connections_are_refused_and_others_served(site, caplog):
    caplog.set_level(logging.INFO)
    held = [_connect(site) for _ in range(10)]
    for sock in held:
        sock.sendall(b"GET /login HTTP/1.1\r\n")  # and never the rest
    # The server's loop accepts them as it gets its turn (late on a loaded host); until it has, one
    # more would take a slot instead of a 503.
    until(lambda: len(site["server"].active_channels) == 10, 20, "the server did not accept the ten")
    surplus = _connect(site)
    assert surplus.recv(4096).startswith(b"HTTP/1.1 503")
    # The head timeout (1 s) frees the slots, long before READ_TIMEOUT (30 s) would.
    assert all(closed_by_peer(sock, within=20) for sock in held)
    assert httpx.get(site["url"] + "/login", timeout=5).status_code == 200
    assert caplog.text.count("web: closed connections that sent no complete request in time: no complete") == 1
    assert caplog.text.count("web: refused connections over the limit: 10 open") == 1


def test_a_body_dripped_a_byte_at_a_time_is_cut_and_others_served(site, caplog):
    caplog.set_level(logging.INFO)
    drippers = [_connect(site) for _ in range(10)]  # every slot, each with a sign-in form that never ends
    for sock in drippers:
        sock.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 1000\r\n\r\nk")
    stop = threading.Event()

    def drip() -> None:  # a byte every 0.2 s each: always active, never complete
        while not stop.wait(0.2):
            for sock in drippers:
                try:
                    sock.sendall(b"k")
                except OSError:
                    pass

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    try:
        # The request timeout (1 s here) and a maintenance tick (1 s) cut them; a loaded host takes
        # longer, but a dripping connection is never silent for READ_TIMEOUT (30 s): uncut, it stays.
        assert all(closed_by_peer(sock, within=20) for sock in drippers)
        assert time.monotonic() - started < 20
        assert httpx.get(site["url"] + "/login", timeout=5).status_code == 200
    finally:
        stop.set()
        for sock in drippers:
            sock.close()
    assert caplog.text.count("web: closed connections that sent no complete request in time") == 1


def test_the_server_shuts_down_cleanly_after_waitress_closed_it_on_an_accept_error(tmp_path, caplog):
    web = server.WebServer("127.0.0.1", 0, create_app(tmp_path / "home"))
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    held = socket.create_connection(("127.0.0.1", web.server_port), timeout=5)  # keeps the loop running
    time.sleep(0.3)

    def failing_channel(*args, **kwargs):
        raise RuntimeError("accept failed")

    web.channel_class = failing_channel  # waitress then closes the server, and with it the trigger
    socket.create_connection(("127.0.0.1", web.server_port), timeout=5).close()
    time.sleep(0.5)
    try:
        web.shutdown()  # was: OSError: [Errno 9] Bad file descriptor (waitress pull_trigger)
        web.server_close()
        thread.join(5)
        assert not thread.is_alive()
        assert closed_by_peer(held, within=1)
    finally:
        held.close()


def test_the_access_log_carries_no_query_string(site, caplog):
    caplog.set_level(logging.INFO, logger="aispendtrack.web")
    httpx.get(site["url"] + "/api/v1/report?customer=acme-secret&token=ask_leaked", timeout=5,
              headers={"Authorization": f"Bearer {site['token']}"})
    # The line is written once the answer is sent, which the client may see first.
    deadline = time.monotonic() + 10
    while not any('"GET /api/v1/report" 200' in line for line in _web_lines(caplog)):
        assert time.monotonic() < deadline, _web_lines(caplog)
        time.sleep(0.05)
    assert "acme-secret" not in caplog.text and "ask_leaked" not in caplog.text


def _web_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "aispendtrack.web"]


def test_a_stalled_export_does_not_hold_the_database(site):
    with writing(home_dir.db_path(site["home"])) as con:
        synthetic.generate(con, 300_000, end=dt.datetime.now(dt.UTC), days=3)
    sock = _connect(site)
    sock.sendall(f"GET /api/v1/export?format=csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {site['token']}"
                 f"\r\n\r\n".encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")  # the client now stops reading, for good
    try:
        started = time.monotonic()
        created = json.loads(run_cli(site["home"], "keys", "create", "--name", "during-export", "--json"))
        # Held by the stalled client, the file would stay locked until the server drops it after its
        # 30-s read timeout; free, the key takes a second (at load 10 it has taken over 5 s).
        assert created["id"] and time.monotonic() - started < server.READ_TIMEOUT - 5
    finally:
        sock.close()


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(site, tmp_path):
    with writing(home_dir.db_path(site["home"])) as con:
        call_rows.insert(con, [call_row(1, customer_id='=HYPERLINK("http://evil.example","x")', feature="@SUM(A1)",
                                    error="-2+3", model="+cmd")])
    api = httpx.get(site["url"] + "/api/v1/export?format=csv", headers={"Authorization": f"Bearer {site['token']}"})
    out = tmp_path / "calls.csv"
    run_cli(site["home"], "export", "--format", "csv", "--out", str(out))
    for text in (api.text, out.read_text()):
        assert "'=HYPERLINK(" in text and "'@SUM(A1)" in text and "'-2+3" in text and "'+cmd" in text
        assert ',=HYPERLINK' not in text and ",@SUM" not in text
    as_json = httpx.get(site["url"] + "/api/v1/export?format=jsonl",
                        headers={"Authorization": f"Bearer {site['token']}"})
    assert json.loads(as_json.text.splitlines()[0])["feature"] == "@SUM(A1)"  # JSON keeps the value as it is


@pytest.mark.parametrize("query", ["since=999999w", "since=99999999999999999999d", "until=9999-99-99", "limit=x"])
def test_every_parameter_error_is_a_400(site, query):
    for path in ("/api/v1/report", "/api/v1/calls", "/api/v1/export", "/api/v1/report/total"):
        response = httpx.get(f"{site['url']}{path}?{query}", headers={"Authorization": f"Bearer {site['token']}"})
        assert response.status_code in (200, 400), (path, query, response.text[:200])
        if response.status_code == 400:
            assert response.json()["error"]["code"] == "bad_request"


def test_a_report_by_day_at_the_calendars_end_is_empty_not_a_500(site):
    # Ahead of UTC: the range's last hours are local times in the year 10000.
    query = {"by": "day", "since": "9999-12-30", "until": "9999-12-31T23:00Z", "tz": "Asia/Kolkata"}
    response = httpx.get(f"{site['url']}/api/v1/report", headers={"Authorization": f"Bearer {site['token']}"},
                         params=query)
    assert (response.status_code, response.json()) == (200, []), response.text[:200]


def test_csv_listings_of_the_cli_neutralise_formulas_too(site):
    with writing(home_dir.db_path(site["home"])) as con:
        call_rows.insert(con, [call_row(1, customer_id="=1+1", ts=dt.datetime.now(dt.UTC))])
    for args in (("calls", "--format", "csv"), ("report", "--by", "customer", "--since", "1d", "--format", "csv")):
        out = run_cli(site["home"], *args)
        assert "'=1+1" in out and ",=1+1" not in out, out


def test_a_cli_export_into_a_stalled_pipe_does_not_hold_the_database(site):
    import subprocess
    import sys
    with writing(home_dir.db_path(site["home"])) as con:
        synthetic.generate(con, 300_000, end=dt.datetime.now(dt.UTC), days=3)
    reader = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(site["home"]), "export"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert reader.stdout.read(1024).startswith(b"id,ts,")  # and then nobody reads on
        started = time.monotonic()
        run_cli(site["home"], "keys", "create", "--name", "during-export")
        assert time.monotonic() - started < 5
    finally:
        reader.kill()
        reader.wait()
