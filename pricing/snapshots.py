"""The list-price data: genai-prices' bundled snapshot, or a ``data.json`` fetched at run time.

    found = snapshots.fetch("https://.../data.json")    # bytes, or PriceDataError
    data = snapshots.parse(found, source, now)          # validated as genai-prices validates it
    snapshots.check_coverage(data, listprices.current())  # refuses one that forgets models

A document is refused whole (PriceDataError, with a reason a person can act on): it failed to
arrive in time, is too large, is not JSON, fails genai-prices' own validation, or lacks more than
``MAX_DROPPED_SHARE`` of the models known now (a truncated or tampered mirror). Nothing in it is
executed; it only becomes rates.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import _providers_from_raw  # its own parser and validator, as UpdatePrices.fetch()'s
from genai_prices.update_prices import DEFAULT_UPDATE_URL

from addon.core.outbound import NoRedirects

__all__ = ["DEFAULT_URL", "MAX_BYTES", "MAX_DROPPED_SHARE", "PriceData", "PriceDataError", "bundled", "fetch", "parse"]

DEFAULT_URL = DEFAULT_UPDATE_URL
MAX_BYTES = 32 * 1024 * 1024  # the published data.json is ~2 MB
FETCH_DEADLINE_S = 30.0  # the whole document
SOCKET_TIMEOUT_S = 10.0  # connecting, and each wait for more bytes
MAX_DROPPED_SHARE = 0.05  # of the models known now; more gone is a broken document, not a retirement


class PriceDataError(Exception):
    """A price document that is not used; the message says why."""


@dataclass(frozen=True, eq=False)
class PriceData:
    """One version of the list prices. ``id``: 12 hex digits of the document's SHA-256 (stored with
    each call it priced), or ``bundled-<version>`` for the package's own data."""

    id: str
    source: str                     # the URL or path it came from, or "bundled"
    fetched_at: dt.datetime | None  # None: bundled
    snapshot: data_snapshot.DataSnapshot
    text: str | None = None         # the document, to store; None: bundled

    @property
    def label(self) -> str:
        """The ``price_source`` of a call priced by it."""
        return f"genai-prices {genai_prices.__version__}" if self.text is None else f"genai-prices data {self.id}"

    def models(self) -> set[tuple[str, str]]:
        return {(p.id, m.id) for p in self.snapshot.providers for m in p.models}


def shown(url: str) -> str:
    """``url`` as stored and logged: without a user, password or query (a mirror's credentials)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme.startswith("http"):
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def bundled() -> PriceData:
    return PriceData(f"bundled-{genai_prices.__version__}", "bundled", None, data_snapshot.get_snapshot())


def fetch(url: str) -> str:
    """The document at ``url`` (http(s)) or path, within FETCH_DEADLINE_S and MAX_BYTES. Errors name
    it as ``shown`` does."""
    if not url.startswith(("http://", "https://")):
        return _read_file(Path(url.removeprefix("file://")))
    return _fetch(url, shown(url))


def _fetch(url: str, name: str) -> str:
    deadline = time.monotonic() + FETCH_DEADLINE_S
    body = bytearray()
    parts = urllib.parse.urlsplit(url)
    headers = {"User-Agent": "aispendtrack"}
    if parts.username is not None:  # a mirror's credentials in the URL: sent as HTTP basic auth
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    request = urllib.request.Request(url, headers=headers)
    try:
        with _OPENER.open(request, timeout=SOCKET_TIMEOUT_S) as response:
            while chunk := response.read(64 * 1024):
                body += chunk
                if len(body) > MAX_BYTES:
                    raise PriceDataError(f"{name} sent more than {MAX_BYTES // 2**20} MB")
                if time.monotonic() > deadline:
                    raise PriceDataError(f"{name} took more than {FETCH_DEADLINE_S:.0f} s")
    except urllib.error.HTTPError as exc:
        raise PriceDataError(f"{name} answered HTTP {exc.code}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise PriceDataError(f"could not fetch {name}: {getattr(exc, 'reason', None) or exc}") from None
    return _decoded(body, name)


_OPENER = urllib.request.build_opener(NoRedirects)  # a mirror's credentials stay with it


def _read_file(path: Path) -> str:
    try:
        with path.open("rb") as f:
            body = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise PriceDataError(f"could not read {path}: {exc.strerror or exc}") from None
    if len(body) > MAX_BYTES:
        raise PriceDataError(f"{path} is larger than {MAX_BYTES // 2**20} MB")
    return _decoded(bytes(body), str(path))


def _decoded(body: bytes | bytearray, source: str) -> str:
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise PriceDataError(f"{source} is not UTF-8 text") from None


def parse(text: str, source: str, fetched_at: dt.datetime) -> PriceData:
    """Validate ``text`` as genai-prices validates its own updates."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PriceDataError(f"{source} is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(raw, list) or not raw:
        raise PriceDataError(f"{source} is not genai-prices data (expected a list of providers)")
    try:
        providers = _providers_from_raw(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        first = str(exc).splitlines()[:3]
        raise PriceDataError(f"{source} fails genai-prices' validation: {' '.join(first)[:300]}") from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return PriceData(digest, source, fetched_at, data_snapshot.DataSnapshot(providers, from_auto_update=False), text)


def check_coverage(new: PriceData, current: PriceData) -> None:
    """Refuse a document that lacks more than MAX_DROPPED_SHARE of the models ``current`` knows."""
    known = current.models()
    gone = known - new.models()
    if known and len(gone) > MAX_DROPPED_SHARE * len(known):
        examples = ", ".join(f"{p}/{m}" for p, m in sorted(gone)[:3])
        raise PriceDataError(f"{new.source} lacks {len(gone)} of the {len(known)} models known now "
                             f"(more than {MAX_DROPPED_SHARE:.0%}; e.g. {examples})")
