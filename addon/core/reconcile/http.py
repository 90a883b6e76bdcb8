"""GET a provider's admin API: JSON back, 429s waited out, every failure a message to act on.

The admin key travels only in the request's header, to the base URL configured for that
provider; it is never stored or logged, and no message here quotes it, nor any text the
provider sent (an API that echoes the key would leak it): errors name the status and the
provider's error type, figures are quoted only as numbers.

A reconciliation is bounded (``bounded()``): ``RUN_DEADLINE_S`` for all its requests together,
``REQUEST_DEADLINE_S`` for any one, ``MAX_PAGES`` per listing, ``MAX_PAGE_BYTES`` per page and
``MAX_LINES`` lines in all, so a provider that pages forever, drips its answer or sends a huge one
costs an error message, not a hung thread or the process's memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import http.client
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .. import outbound
from ..wording import visible

MAX_TRIES = 4
MAX_WAIT_S = 60.0
RUN_DEADLINE_S = 300.0      # one reconciliation: every page of every listing it reads
REQUEST_DEADLINE_S = 60.0   # one request, from connecting to the answer's last byte
MAX_PAGES = 500             # of one listing (a month takes one or two)
MAX_PAGE_BYTES = 16 * 1024 * 1024
MAX_LINES = 200_000         # (bucket, model) lines in one reconciliation; a month has a few thousand
# Per bucket (a UTC day or hour of one model): the proxy allows 100 million tokens a call, and a
# day of an organisation's calls to one model stays far below these. A count past them is a
# broken or hostile report; priced, it would be an infinite difference.
MAX_TOKENS_PER_BUCKET = 10 ** 12
MAX_REQUESTS_PER_BUCKET = 10 ** 10
MAX_USD_PER_BUCKET = Decimal(10 ** 9)


class ReconcileError(RuntimeError):
    """The provider's usage could not be read; ``str()`` says why and what to do. ``status``: the
    HTTP status that refused it, if one did."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Implausible(ValueError):
    """A figure in the provider's report that cannot be right; the text names the field."""


@dataclass
class _Run:
    seconds: float
    ends_at: float
    lines: int = 0

    def left(self, provider: str, url: str) -> float:
        left = self.ends_at - time.monotonic()
        if left <= 0:
            raise ReconcileError(_too_slow(provider, url, self.seconds, "a reconciliation"))
        return left


_run: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("reconciliation", default=None)


@contextlib.contextmanager
def bounded(seconds: float | None = None) -> Iterator[None]:
    """Every request to a usage API inside shares one deadline (``RUN_DEADLINE_S`` by default)."""
    seconds = RUN_DEADLINE_S if seconds is None else seconds
    token = _run.set(_Run(seconds, time.monotonic() + seconds))
    try:
        yield
    finally:
        _run.reset(token)


def _current() -> _Run:
    """The reconciliation under way; a request outside ``bounded()`` gets a deadline of its own."""
    return _run.get() or _Run(RUN_DEADLINE_S, time.monotonic() + RUN_DEADLINE_S)


def get_json(url: str, params: list[tuple[str, str]], headers: dict[str, str], provider: str,
             key_variable: str, sleep=time.sleep) -> dict:
    full = f"{url}?{urllib.parse.urlencode(params)}"
    run = _current()
    for attempt in range(1, MAX_TRIES + 1):
        status, answer_headers, body = _get(full, {**headers, "accept": "application/json"}, run, provider, url)
        if status == 429 and attempt < MAX_TRIES:
            wait = _retry_after(answer_headers.get("retry-after"), attempt)
            if wait >= run.left(provider, url):
                raise ReconcileError(_too_slow(provider, url, run.seconds, "a reconciliation"), 429)
            sleep(wait)
            continue
        if status >= 300:
            raise ReconcileError(_explain(status, _error_type(body), provider, key_variable, url), status)
        try:
            found = json.loads(body)
        except (ValueError, RecursionError):
            found = None
        if not isinstance(found, dict):
            raise ReconcileError(f"{provider}'s usage API at {url} answered with something that is not a JSON "
                                 f"object; is the base URL right?")
        return found
    raise AssertionError("unreachable")


def _get(full: str, headers: dict[str, str], run: _Run, provider: str, url: str):
    """One GET within the request's deadline or the rest of the run's, whichever ends first."""
    seconds = min(REQUEST_DEADLINE_S, run.left(provider, url))
    bad = next((name for name, value in headers.items() if any(c in value for c in "\r\n\0")), None)
    if bad is not None:  # the request library's error would quote the value: an admin key
        raise ReconcileError(f"The {bad} header for {provider}'s usage API holds a line break; check the key's "
                             f"variable for a stray line break inside it.")
    try:
        return outbound.fetch(urllib.request.Request(full, headers=headers), seconds, MAX_PAGE_BYTES)
    except outbound.DeadlineExceeded:
        whole_run = seconds < REQUEST_DEADLINE_S  # the run's deadline came first
        raise ReconcileError(_too_slow(provider, url, run.seconds, "a reconciliation") if whole_run
                             else _too_slow(provider, url, REQUEST_DEADLINE_S, "one request")) from None
    except outbound.AnswerTooLarge:
        raise ReconcileError(f"{provider}'s usage API at {url} answered a page larger than {MAX_PAGE_BYTES:,} "
                             f"bytes; nothing was compared. Is the base URL right?") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # Only what our side says (a refused connection, a name that does not resolve), never the server's words.
        reason = getattr(exc, "reason", exc)
        ours = isinstance(reason, OSError) or type(exc) is ValueError  # ValueError: the URL, as configured
        said = str(reason) if ours and not isinstance(exc, http.client.HTTPException) else type(exc).__name__
        raise ReconcileError(f"Cannot reach {provider}'s usage API at {url} ({said}). Check the network, "
                             f"or the base URL if you set one.") from None


def _too_slow(provider: str, url: str, seconds: float, what: str) -> str:
    return (f"{provider}'s usage API at {url} did not answer in full within the {seconds:g} s {what} "
            f"may take; nothing was compared. Try again later; if it persists, check the network or the base URL.")


def pages(url: str, params: list[tuple[str, str]], headers: dict[str, str], provider: str, key_variable: str):
    """Every page of a paged admin API (the cursor from ``next_page`` while ``has_more``), as bodies;
    at most ``MAX_PAGES``, and a cursor given twice is an error (that listing would never end)."""
    page: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        body = get_json(url, [*params, *([("page", page)] if page else [])], headers, provider, key_variable)
        yield body
        if not body.get("has_more"):
            return
        page = body.get("next_page")
        if not isinstance(page, str) or not page:  # more, but no way to ask for it: the rest would be lost
            raise ReconcileError(f"{provider}'s usage API at {url} said there was more after {len(seen) + 1} "
                                 f"page(s) but gave no cursor to ask for it; nothing was compared. Try again "
                                 f"later; if it persists, report it to {provider}.")
        if page in seen or len(page) > 1000:
            raise ReconcileError(f"{provider}'s usage API at {url} said there was more after {len(seen) + 1} "
                                 f"page(s) but gave back a page cursor it had already given; nothing was compared. "
                                 f"Try again later; if it persists, report it to {provider}.")
        seen.add(page)
    raise ReconcileError(f"{provider}'s usage API at {url} still said there was more after {MAX_PAGES} pages; "
                         f"nothing was compared. Try a shorter --since; if it persists, report it to {provider}.")


def read_page(body: dict, url: str, provider: str, bucket_start, line) -> list[dict]:
    """The lines of one page of buckets holding results; a page not shaped as documented is an
    error that says so."""
    return read_rows(body, url, provider, lambda: [line(bucket_start(bucket), result)
                                                   for bucket in data(body)
                                                   for result in data(bucket, "results")])


def read_rows(body: dict, url: str, provider: str, read) -> list:
    """``read()``, with any sign of an unexpected shape or an implausible figure turned into an
    error that says so; counted against the reconciliation's ``MAX_LINES``."""
    try:
        rows = read()
    except Implausible as exc:
        raise ReconcileError(f"{provider}'s usage API at {url} reported {exc}; nothing was compared. If it persists, "
                             f"report it to {provider} with the day and model.") from None
    except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
        what = f"KeyError: {str(exc)[:60]}" if isinstance(exc, KeyError) else type(exc).__name__  # ours, not theirs
        raise ReconcileError(f"{provider}'s usage API at {url} answered a page we cannot read ({what}); nothing was "
                             f"compared. Try again; if it persists, the API may have changed: report it with the "
                             f"page's first lines.") from None
    run = _current()
    run.lines += len(rows)
    if run.lines > MAX_LINES:
        raise ReconcileError(f"{provider}'s usage API at {url} reported more than {MAX_LINES:,} lines; nothing was "
                             f"compared. Try a shorter --since.")
    return rows


MAX_LABEL = 200  # characters of a name the provider gives (a key id, a project, a line item)


def data(body: dict, name: str = "data") -> list:
    """A page's list of buckets (or a bucket's ``results``), as documented: a list, maybe empty. A page
    without it (``{}``, an error object answered with 200, ``null``) read as "no usage" made every day
    of ours look over."""
    found = body.get(name)
    if not isinstance(found, list):
        raise TypeError(f"{name} is not a list")
    return found


def model_name(value: object) -> str | None:
    """A model as the provider's report names it, shown as ``label`` does; not text is an error of
    the page (a number crashed the price lookup)."""
    if value is not None and not isinstance(value, str):
        raise TypeError("a model name that is not text")
    return label(value)


def label(value: object) -> str | None:
    """A name from the provider's report as we show it (wording.visible), at most ``MAX_LABEL`` characters."""
    return None if value is None else visible(str(value), MAX_LABEL)


def whole(result: dict, name: str, limit: int = MAX_TOKENS_PER_BUCKET) -> int:
    """The count ``result[name]`` (0 when absent or null), as the proxy reads a call's usage: a
    whole number from 0 to ``limit``, else Implausible."""
    value = result.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or not 0 <= value <= limit \
            or value != int(value):
        raise Implausible(f"{name}={_shown(value)}, not a whole number from 0 to {limit:,}")
    return int(value)


def amount(value: object, name: str) -> Decimal:
    """A billed amount (a number, or a decimal string): finite and within ``MAX_USD_PER_BUCKET``
    either way (credits are negative), else Implausible."""
    try:
        found = Decimal(str(value)) if isinstance(value, int | float | str) and not isinstance(value, bool) \
            else Decimal("NaN")
    except InvalidOperation:
        found = Decimal("NaN")
    if not found.is_finite() or abs(found) > MAX_USD_PER_BUCKET:
        raise Implausible(f"{name}={_shown(value)}, not an amount within {MAX_USD_PER_BUCKET:,}")
    return found


def _shown(value: object) -> str:
    """A figure as the provider sent it, if it is a number; text is described, never quoted."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)[:40]
    return f"a {'string' if isinstance(value, str) else type(value).__name__}"


def _retry_after(value: str | None, attempt: int) -> float:
    try:
        return min(MAX_WAIT_S, max(0.0, float(value))) if value else min(MAX_WAIT_S, 2.0 ** attempt)
    except ValueError:
        return min(MAX_WAIT_S, 2.0 ** attempt)


def _error_type(body: bytes) -> str:
    """The provider's error type ("invalid_request_error"), if it is one word: its message may
    quote what it was sent, the admin key included, so it is never shown."""
    try:
        error = json.loads(body or b"{}").get("error") or {}
        kind = error.get("type") or error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError, RecursionError):
        return ""
    return kind if isinstance(kind, str) and re.fullmatch(r"[A-Za-z_]{1,60}", kind) else ""


def _explain(status: int, kind: str, provider: str, key_variable: str, url: str) -> str:
    said = f" ({kind})" if kind else ""
    if status in (401, 403):
        return (f"{provider} refused the admin key in {key_variable} with {status}{said}. The usage API needs an "
                f"organization admin key, not an ordinary API key: create one in the provider's console "
                f"(organization settings, admin keys) and set {key_variable} to it.")
    if status == 429:
        return f"{provider}'s usage API kept answering 429 (rate limited) after {MAX_TRIES} tries{said}; try later."
    if 300 <= status < 400:  # not followed: it would carry the admin key to whatever host it names
        return (f"{provider}'s usage API at {url} answered {status}{said}, a redirect, which is not followed: set "
                f"the provider's base URL to the one it names.")
    return f"{provider}'s usage API at {url} answered {status}{said}."


def rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: object) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(dt.UTC)
