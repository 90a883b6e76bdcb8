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

from addon.core import home as home_dir  # noqa: E402
from addon.core.evaluate import SpikeSettings, is_spike  # noqa: E402
from addon.core.store import calls as call_rows  # noqa: E402
from addon.core.store import writing  # noqa: E402

from .helpers import report_row as row  # noqa: E402


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
        subjects = sorted(json.loads(body)["subject"] for _, body in receiver.requests)
        assert any("daily budget crossed for customer acme" in s for s in subjects)
        assert any("key 2 has used 75% of its monthly quota" in s for s in subjects)
        assert any("spend spike for customer spiky" in s for s in subjects)
        assert not any("customer acme" in s and "spike" in s for s in subjects)  # no history, no spike
        budget = next(json.loads(b) for _, b in receiver.requests if "budget" in json.loads(b)["subject"])
        assert budget["data"]["spent_usd"] == 1.5 and "Raise it with" in budget["text"]
        count = len(receiver.requests)
        again = run(tmp_path, "alerts", "check")
        assert "nothing new" in again.output and len(receiver.requests) == count  # each alert once
    finally:
        receiver.close()
