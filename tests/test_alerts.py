"""Alert channels against real servers on 127.0.0.1: an SMTP server, and HTTP receivers."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from cli.main import cli

from .conftest import free_port


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


class Receiver:
    """An HTTP endpoint that records what it gets, failing the first ``fail`` requests with a 500."""

    def __init__(self, fail: int = 0) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 500 if len(receiver.requests) <= receiver.fail else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-path"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
