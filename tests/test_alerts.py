"""Alert channels against real servers on 127.0.0.1: an SMTP server, and HTTP receivers."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from cli.main import cli

from .helpers import Receiver, free_port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home), *args])


def write_channels(home, text: str) -> None:
    home.mkdir(exist_ok=True)
    (home / "alerts.toml").write_text(text)


def test_email_reaches_the_smtp_server_and_is_recorded(tmp_path, smtp):
    controller, inbox = smtp
    write_channels(tmp_path, f'[[channel]]\nname = "ops"\ntype = "email"\nhost = "127.0.0.1"\n'
                             f'port = {controller.port}\nsecurity = "none"\nfrom = "ast@example.com"\n'
                             f'to = ["ops@example.com"]\n')
    result = run(tmp_path, "alerts", "test", "--channel", "ops")
    assert result.exit_code == 0, result.output
    [message] = inbox.messages
    assert b"Subject: AiSpendTrack test alert" in message and b"the 'ops' channel works" in message
    [row] = json.loads(run(tmp_path, "alerts", "list", "--json").output)
    assert (row["channel"], row["destination"], row["delivered"], row["kind"]) == ("ops", "ops@example.com", True,
                                                                                    "test")


def test_webhook_is_signed_and_retried(tmp_path, monkeypatch):
    receiver = Receiver(fail=2)
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    write_channels(tmp_path, f'[[channel]]\nname = "pager"\ntype = "webhook"\nurl = "{receiver.url}"\n'
                             f'secret_env = "HOOK_SECRET"\nretries = 3\ntimeout_s = 2\n')
    try:
        result = run(tmp_path, "alerts", "test", "--channel", "pager")
        assert result.exit_code == 0, result.output
        assert len(receiver.requests) == 3  # two 500s, then delivered
        headers, body = receiver.requests[-1]
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["x-aispendtrack-signature"] == expected
        assert json.loads(body)["kind"] == "test"
        [row] = json.loads(run(tmp_path, "alerts", "list", "--json").output)
        assert row["destination"] == receiver.url.split("/")[2]  # the host, never the secret path
    finally:
        receiver.close()


def test_slack_gets_text(tmp_path, monkeypatch):
    receiver = Receiver()
    monkeypatch.setenv("SLACK_URL", receiver.url)
    write_channels(tmp_path, '[[channel]]\nname = "slack"\ntype = "slack"\nurl_env = "SLACK_URL"\n')
    try:
        assert run(tmp_path, "alerts", "test", "--channel", "slack").exit_code == 0
        assert json.loads(receiver.requests[0][1])["text"].startswith("*AiSpendTrack test alert*")
    finally:
        receiver.close()


def test_a_failing_channel_is_reported_and_recorded(tmp_path):
    write_channels(tmp_path, f'[[channel]]\nname = "down"\ntype = "webhook"\n'
                             f'url = "http://127.0.0.1:{free_port()}/x"\nretries = 0\ntimeout_s = 1\n')
    result = run(tmp_path, "alerts", "test", "--channel", "down")
    assert result.exit_code == 1 and "Sending to down" in result.output and "failed" in result.output
    [row] = json.loads(run(tmp_path, "alerts", "list", "--json").output)
    assert row["delivered"] is False and "URLError" in row["error"]


def test_a_bad_channel_file_says_what_is_wrong(tmp_path):
    write_channels(tmp_path, '[[channel]]\nname = "x"\ntype = "pigeon"\n')
    result = run(tmp_path, "alerts", "test", "--channel", "x")
    assert result.exit_code == 1 and "type must be one of email, slack, webhook, got 'pigeon'" in result.output


# --- what triggers alerts --------------------------------------------------------------------

import datetime as dt  # noqa: E402
from decimal import Decimal  # noqa: E402

from addon.core import home as home_dir  # noqa: E402
from addon.core.evaluate import SpikeSettings, is_spike  # noqa: E402
from addon.core.store import budgets as budget_rows  # noqa: E402
from addon.core.store import calls as call_rows  # noqa: E402
from addon.core.store import writing  # noqa: E402

from .helpers import report_row as row  # noqa: E402


@pytest.mark.parametrize("host_zone", ["UTC", "Asia/Kathmandu", "America/New_York"])
def test_a_spike_is_found_in_its_utc_hour_whatever_the_hosts_time_zone(tmp_path, host_zone):
    """The hours were cut in DuckDB's session zone, the host's, and looked up by the UTC hour: on a
    host not set to UTC the detector compared other hours and missed the spike."""
    from addon.core.evaluate import _spikes

    now = dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.UTC)
    rows = [row(f"{(now - dt.timedelta(days=d)):%Y-%m-%d}T10:10:00", "gpt-4o", "1", 100.0) for d in range(1, 8)]
    with writing(tmp_path / "spikes.duckdb") as con:
        call_rows.insert(con, [*rows, row("2026-12-01T10:10:00", "gpt-4o", "100", 100.0)])
        con.execute(f"SET TimeZone = '{host_zone}'")  # as DuckDB starts on such a host
        found = [key for key, _ in _spikes(con, now, SpikeSettings())]
    assert "spike:all:all:2026-12-01T10" in found and "spike:key:1:2026-12-01T10" in found


def test_spike_detection_fires_on_a_spike_but_not_on_noise_or_a_ramp():
    import random
    rng = random.Random(7)
    steady = [10 + rng.uniform(-2, 2) for _ in range(7)]
    assert is_spike(steady, 11.5) is None                      # an ordinary hour
    assert is_spike(steady, 60) is not None                    # six times the usual
    ramp = [10 * 1.05 ** d for d in range(7)]                   # +5% a day
    assert is_spike(ramp, 10 * 1.05 ** 7) is None              # the next step of the ramp
    assert is_spike([0.0, 0.0, 0.0], 0.5) is None              # below the $1 floor
    assert is_spike([5.0, 5.0], 500) is None                   # too little history
    assert is_spike(steady, 60, SpikeSettings(k=100)) is None  # the threshold is configurable


def test_check_sends_budget_quota_and_spike_alerts_once(tmp_path):
    receiver = Receiver()
    now = dt.datetime.now(dt.UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    at = lambda t: t.replace(tzinfo=None).isoformat()  # noqa: E731
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)  # rows must fall today, even at 00:00:30
    rows = [row(at(max(today, now - dt.timedelta(minutes=1))), "gpt-4o", "1.50", 100, customer="acme", key_id=1)]
    rows += [row(at(max(today, now - dt.timedelta(minutes=2 + n))), "gpt-4o", "0.01", 100, customer="q",
                 key_id=2) for n in range(3)]
    rows += [row(at(hour - dt.timedelta(days=d) + dt.timedelta(minutes=1)), "gpt-4o", "2.00", 100,
                 customer="spiky", key_id=3) for d in range(1, 6)]
    rows += [row(at(hour + dt.timedelta(seconds=5)), "gpt-4o", "50.00", 100, customer="spiky", key_id=3)]
    with writing(home_dir.db_path(tmp_path)) as con:
        call_rows.insert(con, rows)
    for _ in range(3):
        run(tmp_path, "keys", "create", "--name", "k")
    run(tmp_path, "keys", "set-limit", "2", "--per-month", "4")              # 3 of 4 used: 75%
    run(tmp_path, "budgets", "set", "--scope", "customer:acme", "--all-keys", "--daily", "1")
    write_channels(tmp_path, f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n')
    try:
        first = run(tmp_path, "alerts", "check")
        assert first.exit_code == 0, first.output
        # What a user reads: each alert's scope and period, not its internal id (budget:1:daily:...).
        assert first.output.startswith("6 new alerts\n") and "budget:" not in first.output
        assert "\n  daily budget crossed for customer acme on all keys\n" in first.output
        subjects = sorted(json.loads(body)["subject"] for _, body in receiver.requests)
        assert any("daily budget crossed for customer acme" in s for s in subjects)
        assert any("key 2 has used 75% of its monthly quota" in s for s in subjects)
        assert any("spend spike for customer spiky" in s for s in subjects)
        assert not any("customer acme" in s and "spike" in s for s in subjects)  # no history, no spike
        budget = next(json.loads(b) for _, b in receiver.requests if "budget" in json.loads(b)["subject"])
        assert budget["data"]["spent_usd"] == 1.5 and "Raise it with" in budget["text"]
        count = len(receiver.requests)
        again = run(tmp_path, "alerts", "check")
        assert again.output == "0 new alerts; nothing new to report.\n" and len(receiver.requests) == count
        # Raised above today's $1.50: quiet; crossed again at the raised amount: said once more.
        run(tmp_path, "budgets", "set", "--scope", "customer:acme", "--all-keys", "--daily", "2")
        assert run(tmp_path, "alerts", "check").output == "0 new alerts; nothing new to report.\n"
        with writing(home_dir.db_path(tmp_path)) as con:
            call_rows.insert(con, [row(at(max(today, now - dt.timedelta(seconds=30))), "gpt-4o", "0.75", 100,
                                       customer="acme", key_id=1)])
        raised = run(tmp_path, "alerts", "check")
        assert raised.output.startswith("1 new alert\n"), raised.output
        assert "daily budget crossed for customer acme on all keys" in raised.output
        latest = json.loads(receiver.requests[-1][1])
        assert latest["data"]["spent_usd"] == 2.25 and latest["data"]["budget_usd"] == 2
    finally:
        receiver.close()


def test_a_model_unpriced_for_more_than_a_day_is_alerted_once_naming_the_override_to_add(tmp_path):
    receiver = Receiver()
    now = dt.datetime.now(dt.UTC)
    at = lambda t: t.replace(tzinfo=None).isoformat()  # noqa: E731
    rows = [row(at(now - dt.timedelta(hours=h)), "acme-llm-7b", None, 100) for h in (26, 3)]
    rows += [row(at(now - dt.timedelta(hours=2)), "acme-llm-8b", None, 100)]  # unpriced for 2 hours only
    rows += [row(at(now - dt.timedelta(hours=30)), "gpt-4o", "0.01", 100)]
    with writing(home_dir.db_path(tmp_path)) as con:
        call_rows.insert(con, rows)
    write_channels(tmp_path, f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n')
    try:
        first = run(tmp_path, "alerts", "check")
        assert first.output.startswith("1 new alert\n"), first.output
        [(_, body)] = receiver.requests
        alert = json.loads(body)
        assert alert["kind"] == "unpriced"
        assert alert["subject"] == "AiSpendTrack: calls to openai/acme-llm-7b have no price"
        assert '[[price]]\nprovider = "openai"\nmodel = "acme-llm-7b"\n' in alert["text"]
        assert alert["data"]["calls"] == 2 and "acme-llm-8b" not in alert["text"]
        assert run(tmp_path, "alerts", "check").output == "0 new alerts; nothing new to report.\n"
    finally:
        receiver.close()


# --- hostile receivers, hostile tags, channels that cannot sign ---------------------------------

import contextlib  # noqa: E402
import email  # noqa: E402
import email.policy  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import zoneinfo  # noqa: E402

from addon.core.evaluate import Evaluator  # noqa: E402


class SlowHook:
    """A webhook on 127.0.0.1 that reads the request, then writes its answer one byte every
    ``pause`` seconds; with ``pause=None`` it never answers at all. ``greeting``: a server that
    speaks first (SMTP), dripping that."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"x" * 40 + b"\r\n\r\n"

    def __init__(self, pause: float | None, greeting: bytes | None = None) -> None:
        self.pause, self.stopped, self.requests = pause, threading.Event(), 0
        self.greeting = greeting
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        answer = self.greeting or self.ANSWER
        with conn, contextlib.suppress(OSError):  # the client hung up: its deadline
            if not self.greeting:
                conn.recv(65536)
            self.requests += 1
            for n in range(len(answer)):
                if self.stopped.wait(self.pause if self.pause is not None else 3600):
                    return
                conn.sendall(answer[n:n + 1])
            self.stopped.wait(3600)  # then silence

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


def _send_timed(tmp_path, url: str, channel: str | None = None) -> tuple[float, object]:
    write_channels(tmp_path, (channel or f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{url}"\n')
                   + 'retries = 1\ntimeout_s = 1\n')
    started = time.monotonic()
    result = run(tmp_path, "alerts", "test", "--channel", "hook")
    return time.monotonic() - started, result


def test_a_webhook_that_drips_its_answer_gives_up_like_one_that_never_answers(tmp_path):
    silent, dripping = SlowHook(None), SlowHook(0.3)  # 0.3 s a byte: no single read waits 1 s
    try:
        baseline, refused = _send_timed(tmp_path, silent.url)  # two attempts of timeout_s each
        elapsed, result = _send_timed(tmp_path, dripping.url)
    finally:
        silent.close()
        dripping.close()
    assert refused.exit_code == 1 and result.exit_code == 1, result.output
    assert "no complete answer within 1 s" in result.output and dripping.requests == 2
    assert elapsed < baseline + 1.0, (elapsed, baseline)


def test_a_mail_server_that_drips_its_greeting_gives_up_like_a_webhook_that_never_answers(tmp_path):
    silent, dripping = SlowHook(None), SlowHook(0.3, greeting=b"220 " + b"x" * 60 + b" ESMTP\r\n")
    try:
        baseline, _ = _send_timed(tmp_path, silent.url)
        port = dripping.listener.getsockname()[1]
        elapsed, result = _send_timed(tmp_path, "", f'[[channel]]\nname = "hook"\ntype = "email"\n'
                                      f'host = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
                                      f'from = "ast@example.com"\nto = ["ops@example.com"]\n')
    finally:
        silent.close()
        dripping.close()
    assert result.exit_code == 1 and "no complete answer within 1 s" in result.output, result.output
    assert dripping.requests == 2 and elapsed < baseline + 1.0, (elapsed, baseline)


EVIL_TAG = "<!channel> <https://evil.example|Budget frozen - re-authenticate>"


def _crossed_budget(home, customer: str) -> None:
    """A $1 daily budget over ``customer``, crossed: made in the store itself, for a customer id the
    proxy and `budgets set` would refuse (data from before they checked it)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [row(now.isoformat(), "gpt-4o", "2.50", 100, customer=customer)])
        budget_rows.add(con, "customer", customer, None, Decimal("1"), None, False)


def test_a_customer_tag_cannot_mention_or_link_in_slack(tmp_path):
    receiver = Receiver()
    _crossed_budget(tmp_path, EVIL_TAG)
    write_channels(tmp_path, f'[[channel]]\nname = "slack"\ntype = "slack"\nurl = "{receiver.url}"\n')
    try:
        assert run(tmp_path, "alerts", "check").exit_code == 0
    finally:
        receiver.close()
    [(_, raw)] = receiver.requests
    text = json.loads(raw)["text"]
    assert "&lt;!channel&gt; &lt;https://evil.example|Budget frozen - re-authenticate&gt;" in text
    assert "<" not in text and ">" not in text  # no mention, no link: Slack shows the tag as text
    assert "daily budget crossed for customer" in text and "$2.50" in text


def test_a_customer_tag_cannot_add_email_headers(tmp_path, smtp):
    controller, inbox = smtp
    _crossed_budget(tmp_path, "acme\r\nBcc: evil@example.com\x1b[2J")
    write_channels(tmp_path, f'[[channel]]\nname = "ops"\ntype = "email"\nhost = "127.0.0.1"\n'
                             f'port = {controller.port}\nsecurity = "none"\nfrom = "ast@example.com"\n'
                             f'to = ["ops@example.com"]\n')
    result = run(tmp_path, "alerts", "check")
    assert result.exit_code == 0, result.output
    [raw] = inbox.messages
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Bcc"] is None and sorted(message.keys()) == ["Content-Transfer-Encoding", "Content-Type",
                                                                  "From", "MIME-Version", "Subject", "To"]
    assert "budget crossed for customer acme\\x0d\\x0aBcc: evil@example.com\\x1b[2J" in message["Subject"]
    assert b"\x1b" not in raw and "acme\\x0d" in message.get_content()  # the body: plain text, escapes shown


def _wait_for_alert(home, words: str) -> None:
    deadline = time.monotonic() + 20
    while not any(words in r["subject"] for r in json.loads(run(home, "alerts", "list", "--json").output)):
        assert time.monotonic() < deadline, f"no alert about {words}"
        time.sleep(0.1)


def test_a_webhook_that_cannot_sign_is_refused_naming_the_variable(tmp_path, monkeypatch, caplog):
    receiver = Receiver()
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    write_channels(tmp_path, f'[[channel]]\nname = "pager"\ntype = "webhook"\nurl = "{receiver.url}"\n'
                             f'secret_env = "HOOK_SECRET"\n')
    try:
        tested = run(tmp_path, "alerts", "test", "--channel", "pager")
        assert tested.exit_code == 1 and "Sent a test alert" not in tested.output
        assert "HOOK_SECRET" in tested.output and "not set" in tested.output
        _crossed_budget(tmp_path, "acme")
        checked = run(tmp_path, "alerts", "check")
        assert "HOOK_SECRET" in checked.output and "not set" in checked.output
        caplog.clear()
        evaluator = Evaluator(home_dir.db_path(tmp_path), tmp_path, zoneinfo.ZoneInfo("UTC"), interval=0.2)
        evaluator.start()  # the proxy's alert run, every 0.2 s here
        try:
            for customer in ("other", "third"):  # a new alert while it runs: refused again, not said again
                _crossed_budget(tmp_path, customer)
                _wait_for_alert(tmp_path, f"customer {customer}")
        finally:
            evaluator.stop()
            evaluator.join(5)
        assert receiver.requests == []  # nothing unsigned went out
        said = [r.getMessage() for r in caplog.records if "HOOK_SECRET" in r.getMessage()]
        assert len(said) == 1 and "pager" in said[0] and "not set" in said[0], said
        refused = json.loads(run(tmp_path, "alerts", "list", "--json").output)
        assert {r["delivered"] for r in refused} == {False} and all("HOOK_SECRET" in r["error"] for r in refused)
        monkeypatch.setenv("HOOK_SECRET", "s3cret")
        assert run(tmp_path, "alerts", "test", "--channel", "pager").exit_code == 0
        assert receiver.requests[0][0]["x-aispendtrack-signature"].startswith("sha256=")
    finally:
        receiver.close()


def test_alerts_import_refuses_a_bad_file_and_keeps_the_one_in_use(tmp_path):
    home = tmp_path / "home"
    write_channels(home, '[[channel]]\nname = "ops"\ntype = "webhook"\nurl_env = "OPS_URL"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[[channel]]\nname = "x"\ntype = "pigeon"\n')
    refused = run(home, "alerts", "import", str(bad))
    assert refused.exit_code == 1 and f"{bad}: [[channel]] 1 (x): type must be one of email, slack, webhook" \
        in refused.output
    assert "OPS_URL" in (home / "alerts.toml").read_text()
    good = tmp_path / "good.toml"
    good.write_text('[[channel]]\nname = "pager"\ntype = "webhook"\nurl_env = "PAGER_URL"\n')
    imported = run(home, "alerts", "import", str(good))
    assert imported.exit_code == 0 and f"now in {home / 'alerts.toml'}: pager (webhook)." in imported.output
    assert (home / "alerts.toml").read_text() == good.read_text()


# --- channels' URLs and certificates, alerts sent once, quoted commands (the alerts probe) ------

import shlex  # noqa: E402
import ssl  # noqa: E402
import tomllib  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

from aiosmtpd.smtp import AuthResult  # noqa: E402

from addon.core import evaluate as evaluation  # noqa: E402
from addon.core import notify  # noqa: E402
from addon.core.store import StoreError, reading  # noqa: E402
from addon.core.store import alerts as alert_rows  # noqa: E402

from .certs import make_ca_and_leaf  # noqa: E402


def test_a_channel_url_with_a_bad_port_is_refused_at_import_not_sent_every_round(tmp_path):
    """`http://127.0.0.1:18402x/...` passed the file's check; naming its destination then raised in
    every round, after the other channels had been sent to and before anything was recorded, so
    they got the same alert again each minute (and `alerts test` printed a traceback)."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[[channel]]\nname = "b"\ntype = "webhook"\nurl = "http://127.0.0.1:18402x/hook/secret-path"\n')
    result = run(tmp_path, "alerts", "import", str(bad))
    assert result.exit_code == 1 and "url has a bad host or port" in result.output, result.output
    assert "secret-path" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("url", ["hooks.slack.com/services/T000/B000/SLACKSECRET1",
                                 "http://127.0.0.1:abc/services/SLACKSECRET1",
                                 "http://[::1/services/SLACKSECRET1", "http://127.0.0.1:9/ok/SLACK SECRET1"])
def test_a_secret_url_from_the_environment_that_is_no_url_is_recorded_without_it(tmp_path, monkeypatch, url):
    """Slack's URL is the secret: urllib quoted it whole in its errors, stored in alerts.error and
    shown by `alerts list`; a bad port was a traceback."""
    good = Receiver()
    monkeypatch.setenv("SLACK_URL", url)
    write_channels(tmp_path, '[[channel]]\nname = "slack"\ntype = "slack"\nurl_env = "SLACK_URL"\nretries = 0\n'
                             f'[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "{good.url}"\n')
    try:
        result = run(tmp_path, "alerts", "test", "--channel", "slack")
        assert result.exit_code == 1 and "Sending to slack" in result.output and "failed" in result.output
        assert "Traceback" not in result.output and "SECRET1" not in result.output, result.output
        _crossed_budget(tmp_path, "acme")
        for _ in range(2):
            assert run(tmp_path, "alerts", "check").exit_code == 0
        assert len(good.requests) == 1  # the crossing, once, beside the channel that cannot send
    finally:
        good.close()
    rows = json.loads(run(tmp_path, "alerts", "list", "--json").output)
    assert "SECRET1" not in json.dumps(rows)
    assert {r["destination"] for r in rows if r["channel"] == "slack"} == {"(not a URL)"}


class _Logins:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        self.seen.append(auth_data.login.decode())
        return AuthResult(success=True)


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_email_over_tls_checks_the_servers_certificate_before_the_password(tmp_path, monkeypatch, security):
    """smtplib checks no certificate unless given a context: the password went to any server that
    answered with any certificate."""
    (tmp_path / "certs").mkdir()
    certs = make_ca_and_leaf(tmp_path / "certs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])
    inbox, logins = Inbox(), _Logins()
    tls = {"tls_context": context, "require_starttls": True} if security == "starttls" else {"ssl_context": context}
    # (aiosmtpd offers AUTH over implicit TLS only if told not to wait for a STARTTLS)
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), authenticator=logins,
                            auth_require_tls=security == "starttls", **tls)
    controller.start()
    monkeypatch.setenv("SMTP_USER", "ops")
    monkeypatch.setenv("SMTP_PASSWORD", "SuperSecretPw123")
    channel = (f'[[channel]]\nname = "ops"\ntype = "email"\nhost = "127.0.0.1"\nport = {controller.port}\n'
               f'security = "{security}"\nfrom = "ast@example.com"\nto = ["ops@example.com"]\nretries = 0\n'
               'username_env = "SMTP_USER"\npassword_env = "SMTP_PASSWORD"\n')
    try:
        write_channels(tmp_path, channel)
        refused = run(tmp_path, "alerts", "test", "--channel", "ops")
        assert refused.exit_code == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.output, refused.output
        assert logins.seen == [] and inbox.messages == []
        write_channels(tmp_path, channel + f'ca_file = "{certs["ca"]}"\n')  # the server's private CA
        sent = run(tmp_path, "alerts", "test", "--channel", "ops")
        assert sent.exit_code == 0, sent.output
        assert logins.seen == ["ops"] and len(inbox.messages) == 1
    finally:
        controller.stop()


def test_a_webhook_that_redirects_is_not_delivered_and_its_target_gets_nothing(tmp_path, monkeypatch):
    """urllib followed a 302 as a GET without the body (recorded delivered) and sent the signature on."""
    target = Receiver()
    monkeypatch.setenv("HOOK_SECRET", "s3cret")

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("location", target.url)
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    write_channels(tmp_path, f'[[channel]]\nname = "hook"\ntype = "webhook"\n'
                             f'url = "http://127.0.0.1:{server.server_address[1]}/hook"\nsecret_env = "HOOK_SECRET"\n'
                             'retries = 0\n')
    try:
        result = run(tmp_path, "alerts", "test", "--channel", "hook")
    finally:
        server.shutdown()
        target.close()
    assert result.exit_code == 1 and "302" in result.output, result.output
    assert target.requests == []
    [row] = json.loads(run(tmp_path, "alerts", "list", "--json").output)
    assert row["delivered"] is False


@pytest.fixture(params=["embedded", "shared"])
def either_mode(request):
    """The embedded file, then the shared mode's catalog (PostgreSQL: its own SQL and lock)."""
    if request.param == "shared":
        request.getfixturevalue("shared_env")
    return request.param


def test_two_evaluations_at_once_send_an_alert_once(tmp_path, either_mode):
    """The proxy's round and `alerts check` each read what was sent, then sent, then recorded: with
    a slow channel both sent the same crossing."""
    received: list[bytes] = []

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["content-length"])))
            time.sleep(1)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    db = home_dir.db_path(tmp_path)
    with writing(db):
        pass
    channel = notify.Channel("hook", "webhook", {"url": f"http://127.0.0.1:{server.server_address[1]}/hook"})
    alert = notify.Alert("budget", "AiSpendTrack: daily budget crossed for customer acme", "crossed")
    try:
        threads = [threading.Thread(target=evaluation.send_new, args=(db, [channel], [("budget:1:day", alert)]))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        server.shutdown()
    assert len(received) == 1


def test_commands_in_alerts_are_quoted_for_the_shell_and_toml(tmp_path):
    """A model name is the upstream's text and a customer id the caller's: pasted as they were into
    the alert's command lines, `$(touch /tmp/pwned)` ran, and a quote and a newline added a TOML key."""
    model = 'm $(touch /tmp/pwned) "q\nmodel = "x'
    text = evaluation._unpriced_alert({"provider": "openai", "model": model, "service_tier": None, "calls": 3,
                                       "first_seen": dt.datetime(2026, 12, 1)}).text
    entry = text[text.index("[[price]]"):text.index("input_mtok")]
    assert tomllib.loads(entry)["price"] == [{"provider": "openai", "model": model}]
    command = text[text.rindex("`aispendtrack reprice") + 1:text.rindex("`")]
    assert shlex.split(command) == ["aispendtrack", "reprice", "--provider", "openai", "--model", model]
    from addon.core.budgets import Budget
    budget = Budget(1, "customer", "<!channel> $(id)", Decimal("1"), None, False, None)
    assert shlex.split(budget.set_args) == ["--scope", "customer:<!channel> $(id)", "--all-keys"]


def test_a_channel_that_failed_an_alert_gets_it_in_a_later_round_and_the_others_not_twice(tmp_path, either_mode):
    """An alert whose channel failed (a mail server down for a minute) was never tried again: the
    crossing was lost. Now the failed channel is tried again while the alert stands, with backoff."""
    down, up = Receiver(fail=1), Receiver()
    db = home_dir.db_path(tmp_path)
    with writing(db):
        pass
    channels = [notify.Channel("down", "webhook", {"url": down.url, "retries": 0}),
                notify.Channel("up", "webhook", {"url": up.url, "retries": 0})]
    alert = notify.Alert("budget", "AiSpendTrack: daily budget crossed for customer acme", "crossed")
    now = dt.datetime.now(dt.UTC)
    try:
        assert evaluation.send_new(db, channels, [("budget:1:day", alert)], now) == [alert]
        assert (len(down.requests), len(up.requests)) == (1, 1)  # a 500, and delivered
        assert evaluation.send_new(db, channels, [("budget:1:day", alert)], now + dt.timedelta(seconds=30)) == []
        assert (len(down.requests), len(up.requests)) == (1, 1)  # not due yet
        evaluation.send_new(db, channels, [("budget:1:day", alert)], now + dt.timedelta(seconds=61))
        assert (len(down.requests), len(up.requests)) == (2, 1)  # tried again, and delivered now
        evaluation.send_new(db, channels, [("budget:1:day", alert)], now + dt.timedelta(hours=1))
        assert (len(down.requests), len(up.requests)) == (2, 1)
    finally:
        down.close()
        up.close()
    rows = json.loads(run(tmp_path, "alerts", "list", "--json").output)
    assert sorted((r["channel"], r["delivered"]) for r in rows) == [("down", False), ("down", True), ("up", True)]


def test_ca_file_is_an_absolute_path_to_a_file_and_for_email_only(tmp_path):
    """~/ca.pem passed the check (expanded) and failed every send (not expanded); a relative one was
    checked from the CLI's directory and read from the proxy's; on a webhook it was ignored."""
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    email_channel = ('[[channel]]\nname = "ops"\ntype = "email"\nhost = "127.0.0.1"\nfrom = "a@example.com"\n'
                     'to = ["b@example.com"]\n')
    for entry, words in ((email_channel + 'ca_file = "ca.pem"\n', "give its absolute path"),
                         ('[[channel]]\nname = "hook"\ntype = "webhook"\nurl = "https://example.com/x"\n'
                          f'ca_file = "{tmp_path / "ca.pem"}"\n', "ca_file is for email channels")):
        with pytest.raises(notify.ChannelError, match=words):
            notify.parse(entry, "alerts.toml")
    [channel] = notify.parse(email_channel + f'ca_file = "{tmp_path / "ca.pem"}"\n', "alerts.toml").values()
    assert channel.settings["ca_file"] == str(tmp_path / "ca.pem")


class _Hanging:
    """A webhook that answers nothing for ``seconds``: a channel stuck until its timeout."""

    def __init__(self, seconds: float) -> None:
        self.requests = 0
        hanging = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                hanging.requests += 1
                time.sleep(seconds)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _crossings(n: int) -> list[tuple[str, notify.Alert]]:
    return [(f"budget:{i}:day", notify.Alert("budget", f"AiSpendTrack: daily budget crossed for customer c{i}",
                                             "crossed")) for i in range(n)]


def test_a_hanging_channel_delays_no_other_channel_nor_alert_and_each_attempt_is_on_record_as_it_ends(tmp_path):
    """Probe: channels were tried in order and alerts one after another, each recorded once all its
    channels had answered: with a webhook that hangs listed first, a working channel got three
    budget alerts 44 s, 88 s and 131 s late, and nothing said it had them meanwhile."""
    hanging, up = _Hanging(8), Receiver()
    db = home_dir.db_path(tmp_path)
    with writing(db):
        pass
    channels = [notify.Channel("stuck", "webhook", {"url": hanging.url, "retries": 0, "timeout_s": 5}),
                notify.Channel("up", "webhook", {"url": up.url, "retries": 0})]
    found = _crossings(3)
    sent: list[list[notify.Alert]] = []
    round_ = threading.Thread(target=lambda: sent.append(evaluation.send_new(db, channels, found)))
    try:
        round_.start()
        # Each attempt is recorded once its channel has answered: a moment after the receiver has the
        # request (a CI host once read the records in between). The stuck channel's timeout is 5 s away.
        expected = {key: ["up"] for key, _ in found}
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            with reading(db) as con:
                on_record = alert_rows.attempts(con, [key for key, _ in found])
            if len(up.requests) == 3 and {key: sorted(by) for key, by in on_record.items()} == expected:
                break
            time.sleep(0.05)
        assert len(up.requests) == 3 and round_.is_alive()
        assert {key: sorted(by_channel) for key, by_channel in on_record.items()} == expected
        round_.join(30)
        assert sent == [[alert for _, alert in found]] and hanging.requests == 3
    finally:
        hanging.close()
        up.close()


def test_an_attempt_the_store_did_not_take_is_recorded_before_the_next_round_sends_anything(tmp_path):
    """Probe: a round whose records the store refused (PostgreSQL away; another process holding the
    file here) failed whole, and the next round sent the same alert to the channel that had it."""
    from .helpers import hold_read_only

    up = Receiver()
    db = home_dir.db_path(tmp_path)
    with writing(db):
        pass
    channels = [notify.Channel("up", "webhook", {"url": up.url, "retries": 0})]
    [(key, alert)] = found = _crossings(1)

    def evaluation_round() -> list[notify.Alert]:  # as the proxy's Evaluator runs it: a failure is logged
        try:
            return evaluation.send_new(db, channels, found)
        except StoreError:
            return []

    holder = hold_read_only(db, 60)
    try:
        evaluation_round()  # delivered; its record waits 10 s for the file, then is kept in memory
    finally:
        holder.kill()
        holder.wait()
    try:
        assert evaluation_round() == [] and len(up.requests) == 1
        with reading(db) as con:
            assert alert_rows.attempts(con, [key])[key]["up"].delivered
    finally:
        up.close()


def test_a_replica_that_lost_its_turn_to_a_postgres_restart_sends_nothing_twice(cluster, shared_env, tmp_path):
    """Probe: the turn to send is an advisory lock, which a restart of PostgreSQL ends while its
    replica still waits on a slow channel; the next replica took the turn, found nothing recorded
    (the records came once every channel had answered) and sent the alert again to the working one."""
    hanging, up = _Hanging(8), Receiver()
    db = home_dir.db_path(tmp_path)
    channels = [notify.Channel("stuck", "webhook", {"url": hanging.url, "retries": 0, "timeout_s": 5}),
                notify.Channel("up", "webhook", {"url": up.url, "retries": 0})]
    found = _crossings(1)
    first = threading.Thread(target=evaluation.send_new, args=(db, channels, found))
    try:
        first.start()
        deadline = time.monotonic() + 3
        while not (up.requests and hanging.requests) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        cluster.stop("fast")
        cluster.start()
        cluster.wait_ready()
        assert first.is_alive()  # still waiting on the stuck channel
        assert evaluation.send_new(db, channels, found) == []  # another replica's round, its turn now
        first.join(30)
        assert (len(up.requests), hanging.requests) == (1, 1)
    finally:
        hanging.close()
        up.close()


def test_the_alerts_left_when_the_turn_to_send_is_lost_reach_every_channel_in_a_later_round(tmp_path, monkeypatch):
    """Review: sends not started once the turn was lost were dropped unrecorded, and a later round
    tries again only the channels on record for an alert: a channel left out never got it."""
    import itertools

    first, second = Receiver(), Receiver()
    db = home_dir.db_path(tmp_path)
    with writing(db):
        pass
    channels = [notify.Channel("first", "webhook", {"url": first.url, "retries": 0}),
                notify.Channel("second", "webhook", {"url": second.url, "retries": 0})]
    found = _crossings(3)
    asked = itertools.count()

    @contextlib.contextmanager
    def turn_lost_after_two_sends(_db, _on_wait=None):
        yield lambda: next(asked) < 2
    now = dt.datetime.now(dt.UTC)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(evaluation, "one_sender", turn_lost_after_two_sends)
            sent = evaluation.send_new(db, channels, found, now)
        assert len(first.requests) + len(second.requests) == 2 and 1 <= len(sent) <= 2
        rows = json.loads(run(tmp_path, "alerts", "list", "--json").output)
        assert sum(r["error"] is not None and r["error"].startswith("not sent: this process lost its turn")
                   for r in rows) == 4
        evaluation.send_new(db, channels, found, now + dt.timedelta(seconds=61))
        for receiver in (first, second):  # each alert on each channel, once
            assert sorted(json.loads(body)["subject"] for _, body in receiver.requests) == sorted(
                alert.subject for _, alert in found)
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("mode", ["embedded", "shared"])
def test_alerts_check_says_it_waits_for_another_processs_round_then_sends(tmp_path, mode, request):
    """Probe: `alerts check` behind a round waiting on a slow channel sat silent for two minutes."""
    import fcntl
    import os

    up = Receiver()
    db = home_dir.db_path(tmp_path)
    if mode == "shared":
        request.getfixturevalue("shared_env")
    with writing(db):
        pass
    channels = [notify.Channel("up", "webhook", {"url": up.url, "retries": 0})]
    waited: list[float] = []
    started = time.monotonic()
    release = threading.Event()

    def other_round() -> None:  # another process's turn, held a second
        if mode == "embedded":
            fd = os.open(db.with_name(evaluation._SENDING_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            release.wait(10)
            os.close(fd)
        else:
            with evaluation.one_sender(db):
                release.wait(10)
    holder = threading.Thread(target=other_round)
    holder.start()
    try:
        time.sleep(0.3)
        threading.Timer(1.0, release.set).start()
        sent = evaluation.send_new(db, channels, _crossings(1), on_wait=lambda: waited.append(time.monotonic()))
        assert len(waited) == 1 and waited[0] - started < 0.9  # said at once, not once the turn came
        assert len(sent) == 1 and len(up.requests) == 1
    finally:
        release.set()
        holder.join(10)
        up.close()
