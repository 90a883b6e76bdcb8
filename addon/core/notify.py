"""Notification channels: email over SMTP, Slack incoming webhooks, and signed generic webhooks.

Channels are listed in ``alerts.toml`` in the data directory; ``alerts.example.toml`` beside this
module is the commented format (``aispendtrack alerts init`` copies it). Secrets come from
environment variables named in the file, never from the file itself; a webhook whose
``secret_env`` names an unset variable is refused (``unusable``), not sent unsigned. Every channel
has ``timeout_s`` (default 10: the whole of one attempt, answer included) and ``retries`` (default
3, with backoff 0.5 s, 1 s, 2 s ...). A failing channel never raises: ``send`` returns what happened.

What an alert says may hold text a customer chose (a customer id, a feature): each channel gets it
in its own format's plain text (``slack_text``, ``_plain``), never as markup or a header of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import smtplib
import ssl
import threading
import time
import tomllib
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

from . import outbound

log = logging.getLogger(__name__)

FILE_NAME = "alerts.toml"
EXAMPLE = Path(__file__).with_name("alerts.example.toml")
SIGNATURE_HEADER = "X-AiSpendTrack-Signature"
TIMEOUT_S = 10.0         # one attempt, from connecting to the answer's last byte (a channel's timeout_s)
RETRIES = 3              # after the first attempt (a channel's retries)
MAX_ANSWER_BYTES = 65_536  # of a webhook's answer; only its status matters
_TYPES = {"email": ("host", "from", "to"), "slack": (), "webhook": ()}
_ALLOWED = {"name", "type", "timeout_s", "retries", "host", "port", "security", "ca_file", "from", "to",
            "username_env", "password_env", "url", "url_env", "secret_env"}


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
    tried: bool = True  # False: not sent at all (the turn to send was lost), recorded as failed


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
        if url_problem(url):
            return "(not a URL)"
        parts = urlsplit(url)  # the host and port only: a login in the URL is a secret too
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)

    def unusable(self) -> str | None:
        """Why this channel must not be used as it is configured now, or None."""
        variable = self.settings.get("secret_env")
        if self.type == "webhook" and variable and not os.environ.get(variable):
            return (f"the {self.name!r} webhook channel signs with the secret in ${variable}, which is not set: "
                    f"set it, or remove secret_env from the channel to send unsigned")
        return None

    def send(self, alert: Alert, sleep=time.sleep) -> Delivery:
        refused = self.unusable()
        if refused:
            return Delivery(self.name, self.destination, False, refused)
        retries = int(self.settings.get("retries", RETRIES))
        error = None
        for attempt in range(retries + 1):
            try:
                self._send_once(alert)
                return Delivery(self.name, self.destination, True, None)
            except Exception as exc:  # any failure is recorded, never raised into the proxy
                error = f"{type(exc).__name__}: {_without(str(exc), self._url())[:200]}"
                if attempt < retries:
                    sleep(0.5 * 2 ** attempt)
        return Delivery(self.name, self.destination, False, error)

    def _send_once(self, alert: Alert) -> None:
        timeout = float(self.settings.get("timeout_s", TIMEOUT_S))
        if self.type == "email":
            self._email(alert, timeout)
        elif self.type == "slack":
            text = f"*{slack_text(alert.subject)}*\n{slack_text(alert.text)}"
            _post(self._url(), json.dumps({"text": text}).encode(), {}, timeout)
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
        message["Subject"], message["From"] = _plain(alert.subject), s["from"]
        message["To"] = ", ".join(s["to"])
        message.set_content(_plain(alert.text, keep="\n"))
        security = s.get("security", "starttls")
        port = int(s.get("port", 465 if security == "tls" else 587))
        # The server's certificate is checked (smtplib's default checks nothing: the password went to
        # whoever answered); ca_file for a server with a private CA.
        context = ssl.create_default_context(cafile=s.get("ca_file"))
        with outbound.deadline(timeout) as watch, _smtp(security, watch, context)(s["host"], port, timeout) as smtp:
            if security == "starttls":
                smtp.starttls(context=context)
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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ChannelError(f"{path}: not valid TOML ({exc}).") from None
    return parse(text, str(path))


def parse(text: str, origin: str) -> dict[str, Channel]:
    """The channels of an alerts file's text; ``origin`` says where it is in messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ChannelError(f"{origin}: not valid TOML ({exc}).") from None
    channels = {}
    for n, entry in enumerate(data.get("channel", []), start=1):
        channel = _channel(origin, n, entry)
        if channel.name in channels:
            raise ChannelError(f"{origin}: two channels are named {channel.name!r}; names must be unique.")
        channels[channel.name] = channel
    return channels


def _channel(origin: str, n: int, entry: object) -> Channel:
    where = f"{origin}: [[channel]] {n}"
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
    if kind != "email" and entry.get("url") and (problem := url_problem(str(entry["url"]))):
        raise ChannelError(f"{where} ({entry['name']}): url {problem}.")
    if "ca_file" in entry and kind != "email":
        raise ChannelError(f"{where} ({entry['name']}): ca_file is for email channels (webhooks use the system's CAs).")
    if "ca_file" in entry:
        ca = Path(str(entry["ca_file"])).expanduser()
        if not ca.is_absolute() or not ca.is_file():  # read by the proxy, wherever it runs from
            raise ChannelError(f"{where} ({entry['name']}): ca_file {entry['ca_file']!r} is not a file "
                               "(give its absolute path).")
        entry = {**entry, "ca_file": str(ca)}
    return Channel(entry["name"], kind, dict(entry))


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be posted to (said without the URL, whose path may be a secret), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises for a port that is no number or out of range
    except ValueError:
        return "has a bad host or port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be http:// or https:// and name a host"
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        return "has spaces or control characters"
    return None


def _without(text: str, url: str | None) -> str:
    """An error's text without the URL or its path and query (Slack's and many webhooks' secret),
    which urllib quotes in some of its messages."""
    if not url:
        return text
    try:
        parts = urlsplit(url)
        pieces = {url, parts.path, parts.query, parts.netloc.rpartition("@")[0]}
    except ValueError:  # no URL to take apart ("http://[::1/..."): the whole of it, then
        pieces = {url}
    for secret in sorted(pieces, key=len, reverse=True):
        if len(secret) > 1:
            text = text.replace(secret, "(the URL)")
    return text


def _env(name: str | None) -> str | None:
    return os.environ.get(name) if name else None


def _smtp(security: str, watch, context: ssl.SSLContext) -> Callable[[str, int, float], smtplib.SMTP]:
    """(host, port, timeout) -> an SMTP connection for ``security`` whose socket ``watch`` cuts at the
    deadline (the greeting is read while connecting, before the object is returned)."""
    base = smtplib.SMTP_SSL if security == "tls" else smtplib.SMTP

    class Watched(base):  # type: ignore[valid-type,misc]
        def _get_socket(self, host, port, timeout):
            watch(lambda: self.sock)
            return super()._get_socket(host, port, timeout)
    if security == "tls":
        return lambda host, port, timeout: Watched(host, port, timeout=timeout, context=context)
    return lambda host, port, timeout: Watched(host, port, timeout=timeout)


def slack_text(text: str) -> str:
    """``text`` as Slack shows it literally: its docs ask for &, < and > as entities, which is all
    its markup for mentions (<!channel>) and links (<https://...|label>) is made of."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(text: str, keep: str = "") -> str:
    """``text`` with control characters (CR and LF that would start a header, terminal escapes)
    written as visible escapes, except those in ``keep``."""
    return "".join(ch if ch in keep or unicodedata.category(ch) != "Cc" else f"\\x{ord(ch):02x}" for ch in text)


def _post(url: str | None, body: bytes, headers: dict, timeout: float) -> None:
    if not url:
        raise ValueError("no URL (is the url_env variable set?)")
    if problem := url_problem(url):
        raise ValueError(f"the URL {problem}")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    status, answer_headers, _ = outbound.fetch(request, timeout, MAX_ANSWER_BYTES)
    if status >= 300:
        raise urllib.error.HTTPError(url, status, "unexpected status", answer_headers, None)


# At most this many sends at once: a channel that hangs (its timeout times its tries, ~44 s by
# default) then delays no other channel nor the round's other alerts (it held each alert's every
# channel, one alert after another: the third reached a working channel 131 s late).
MAX_SENDING = 8


@dataclass(frozen=True)
class Send:
    alert: Alert
    channels: list[Channel]
    dedupe_key: str | None = None


# Attempts made whose record the store did not take (PostgreSQL away meanwhile): recorded before the
# next round decides anything (``record_unrecorded``), which would otherwise send them again.
_unrecorded: list[tuple] = []
_unrecorded_lock = threading.Lock()


def deliver(db: Path, channels: list[Channel], alert: Alert, dedupe_key: str | None = None) -> list[Delivery]:
    """Send one alert to its channels (see ``deliver_all``); what happened on each, in their order."""
    return deliver_all(db, [Send(alert, channels, dedupe_key)])[0]


def deliver_all(db: Path, sends: list[Send], sending: Callable[[], bool] = lambda: True) -> list[list[Delivery]]:
    """Send every alert to each of its channels, up to MAX_SENDING at once, and record each attempt
    as it ends (failures included): a channel that took an alert is on record before a slower one
    answers. Once ``sending()`` is false (the turn to send was lost) no send starts: those left are
    recorded as failed, so a later round tries them again. An alert with no channel is still
    recorded, so `alerts list` shows it and it is not repeated. The sending threads are daemons: a
    proxy that stops does not wait for a channel that hangs (an attempt it cut is sent again)."""
    import queue

    pairs = [(send, channel) for send in sends for channel in _targets(send)]
    done: list[Delivery | None] = [None] * len(pairs)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(len(pairs)):
        todo.put(i)

    def work() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            send, channel = pairs[i]
            delivery = _attempt(send.alert, channel, sending)
            _record(db, send.alert, delivery, send.dedupe_key)
            done[i] = delivery

    threads = [threading.Thread(target=work, name="aispendtrack-send", daemon=True)
               for _ in range(min(MAX_SENDING, len(pairs)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found: dict[int, list[Delivery]] = {id(send): [] for send in sends}
    for (send, _), delivery in zip(pairs, done, strict=True):
        if delivery is not None:
            found[id(send)].append(delivery)
    return [found[id(send)] for send in sends]


def _attempt(alert: Alert, channel: Channel | None, sending: Callable[[], bool]) -> Delivery:
    if channel is None:
        return Delivery("(none)", "(none)", False, f"no channels in {FILE_NAME}")
    if not sending():
        return Delivery(channel.name, channel.destination, False,
                        "not sent: this process lost its turn to send (PostgreSQL restarted?); tried in a later round",
                        tried=False)
    return channel.send(alert)


def _targets(send: Send) -> list[Channel | None]:
    targets: list[Channel | None] = [*send.channels]
    return targets or [None]  # None: no channel, recorded as such


def _record(db: Path, alert: Alert, d: Delivery, dedupe_key: str | None) -> None:
    import datetime as dt

    from .store import alerts as alert_rows
    from .store import writing

    attempt = (dt.datetime.now(dt.UTC), alert.kind, alert.subject, d.channel, d.destination, d.delivered, d.error,
               dedupe_key)
    try:
        with writing(db) as con:
            alert_rows.record(con, *attempt)
    except Exception as exc:  # the store away, its disk full...: kept, recorded before the next round sends
        with _unrecorded_lock:
            _unrecorded.append(attempt)
        log.warning("alert %r %s on %s, but its record waits (%s): written before the next round sends anything",
                    alert.subject, "delivered" if d.delivered else "failed", d.channel, exc)


def record_unrecorded(db: Path) -> None:
    """Record the attempts the store did not take earlier; raises StoreError while it still cannot."""
    from .store import alerts as alert_rows
    from .store import writing

    with _unrecorded_lock:
        if not _unrecorded:
            return
        with writing(db) as con:
            alert_rows.record_many(con, _unrecorded)  # all or none: a second try records none twice
        _unrecorded.clear()
