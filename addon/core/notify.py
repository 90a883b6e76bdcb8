"""Notification channels: email over SMTP, Slack incoming webhooks, and signed generic webhooks.

Channels are listed in ``alerts.toml`` in the data directory; ``alerts.example.toml`` beside this
module is the commented format (``aispendtrack alerts init`` copies it). Secrets come from
environment variables named in the file, never from the file itself. Every channel has
``timeout_s`` (default 10) and ``retries`` (default 3, with backoff 0.5 s, 1 s, 2 s ...). A failing
channel never raises: ``send`` returns what happened.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import smtplib
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

FILE_NAME = "alerts.toml"
EXAMPLE = Path(__file__).with_name("alerts.example.toml")
SIGNATURE_HEADER = "X-AiSpendTrack-Signature"
_TYPES = {"email": ("host", "from", "to"), "slack": (), "webhook": ()}
_ALLOWED = {"name", "type", "timeout_s", "retries", "host", "port", "security", "from", "to", "username_env",
            "password_env", "url", "url_env", "secret_env"}


class ChannelError(ValueError):
    """The alerts file cannot be used; the message names the file, the channel and the fix."""


@dataclass(frozen=True)
class Alert:
    kind: str      # test, budget, quota, spike
    subject: str
    text: str      # what happened, the numbers, the scope, what to do
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    channel: str
    destination: str
    delivered: bool
    error: str | None


@dataclass(frozen=True)
class Channel:
    name: str
    type: str
    settings: dict

    @property
    def destination(self) -> str:
        """Where it goes, safe to show and store: addresses or a host, never a URL's secret path."""
        if self.type == "email":
            return ", ".join(self.settings["to"])
        url = self._url()
        if not url:
            return "(no url)"
        parts = urlsplit(url)  # the host and port only: a login in the URL is a secret too
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)

    def send(self, alert: Alert, sleep=time.sleep) -> Delivery:
        retries = int(self.settings.get("retries", 3))
        error = None
        for attempt in range(retries + 1):
            try:
                self._send_once(alert)
                return Delivery(self.name, self.destination, True, None)
            except Exception as exc:  # any failure is recorded, never raised into the proxy
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
                if attempt < retries:
                    sleep(0.5 * 2 ** attempt)
        return Delivery(self.name, self.destination, False, error)

    def _send_once(self, alert: Alert) -> None:
        timeout = float(self.settings.get("timeout_s", 10))
        if self.type == "email":
            self._email(alert, timeout)
        elif self.type == "slack":
            _post(self._url(), json.dumps({"text": f"*{alert.subject}*\n{alert.text}"}).encode(), {}, timeout)
        else:
            body = json.dumps({"kind": alert.kind, "subject": alert.subject, "text": alert.text,
                               "data": alert.data}, default=str).encode()
            headers = {}
            secret = _env(self.settings.get("secret_env"))
            if secret:
                headers[SIGNATURE_HEADER] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            _post(self._url(), body, headers, timeout)

    def _email(self, alert: Alert, timeout: float) -> None:
        s = self.settings
        message = EmailMessage()
        message["Subject"], message["From"], message["To"] = alert.subject, s["from"], ", ".join(s["to"])
        message.set_content(alert.text)
        security = s.get("security", "starttls")
        port = int(s.get("port", 465 if security == "tls" else 587))
        smtp_class = smtplib.SMTP_SSL if security == "tls" else smtplib.SMTP
        with smtp_class(s["host"], port, timeout=timeout) as smtp:
            if security == "starttls":
                smtp.starttls()
            user, password = _env(s.get("username_env")), _env(s.get("password_env"))
            if user:
                smtp.login(user, password or "")
            smtp.send_message(message)

    def _url(self) -> str | None:
        return self.settings.get("url") or _env(self.settings.get("url_env"))


def load(path: Path) -> dict[str, Channel]:
    """Read and validate the alerts file; a missing file means no channels."""
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ChannelError(f"{path}: not valid TOML ({exc}).") from None
    channels = {}
    for n, entry in enumerate(data.get("channel", []), start=1):
        channel = _channel(path, n, entry)
        if channel.name in channels:
            raise ChannelError(f"{path}: two channels are named {channel.name!r}; names must be unique.")
        channels[channel.name] = channel
    return channels


def _channel(path: Path, n: int, entry: object) -> Channel:
    where = f"{path}: [[channel]] {n}"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ChannelError(f"{where} needs a name.")
    kind = entry.get("type")
    if kind not in _TYPES:
        raise ChannelError(f"{where} ({entry['name']}): type must be one of {', '.join(_TYPES)}, got {kind!r}.")
    unknown = set(entry) - _ALLOWED
    if unknown:
        raise ChannelError(f"{where} ({entry['name']}): unknown key(s) {sorted(unknown)}.")
    missing = [k for k in _TYPES[kind] if not entry.get(k)]
    if missing:
        raise ChannelError(f"{where} ({entry['name']}): an {kind} channel needs {missing}.")
    if kind == "email" and not isinstance(entry["to"], list):
        raise ChannelError(f"{where} ({entry['name']}): to must be a list of addresses.")
    if kind == "email" and entry.get("security", "starttls") not in ("starttls", "tls", "none"):
        raise ChannelError(f"{where} ({entry['name']}): security must be starttls, tls or none.")
    if kind != "email" and not (entry.get("url") or entry.get("url_env")):
        raise ChannelError(f"{where} ({entry['name']}): a {kind} channel needs url or url_env.")
    return Channel(entry["name"], kind, dict(entry))


def _env(name: str | None) -> str | None:
    return os.environ.get(name) if name else None


def _post(url: str | None, body: bytes, headers: dict, timeout: float) -> None:
    if not url:
        raise ValueError("no URL (is the url_env variable set?)")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) only, checked)
        if response.status >= 300:
            raise urllib.error.HTTPError(url, response.status, "unexpected status", response.headers, None)


def deliver(db: Path, channels: list[Channel], alert: Alert, dedupe_key: str | None = None) -> list[Delivery]:
    """Send to every channel and record each attempt in the store (failures included). With no
    channel configured the alert is still recorded, so `alerts list` shows it and it is not repeated."""
    import datetime as dt

    from .store import alerts as alert_rows
    from .store import writing

    deliveries = [channel.send(alert) for channel in channels] or \
        [Delivery("(none)", "(none)", False, f"no channels in {FILE_NAME}")]
    with writing(db) as con:
        for d in deliveries:
            alert_rows.record(con, dt.datetime.now(dt.UTC), alert.kind, alert.subject, d.channel, d.destination,
                              d.delivered, d.error, dedupe_key)
    return deliveries
