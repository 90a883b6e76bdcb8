"""GET a provider's admin API: JSON back, 429s waited out, every failure a message to act on.

The admin key travels only in the request's header, to the base URL configured for that
provider; it is never stored or logged, and no message here quotes it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.parse
import urllib.request

MAX_TRIES = 4
MAX_WAIT_S = 60.0
TIMEOUT_S = 30.0


class ReconcileError(RuntimeError):
    """The provider's usage could not be read; ``str()`` says why and what to do. ``status``: the
    HTTP status that refused it, if one did."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def get_json(url: str, params: list[tuple[str, str]], headers: dict[str, str], provider: str,
             key_variable: str, sleep=time.sleep) -> dict:
    full = f"{url}?{urllib.parse.urlencode(params)}"
    for attempt in range(1, MAX_TRIES + 1):
        request = urllib.request.Request(full, headers={**headers, "accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 429 and attempt < MAX_TRIES:
                sleep(_retry_after(exc.headers.get("retry-after"), attempt))
                continue
            raise ReconcileError(_explain(exc.code, _message(exc), provider, key_variable, url), exc.code) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ReconcileError(f"Cannot reach {provider}'s usage API at {url} ({reason}). Check the network, "
                                 f"or the base URL if you set one.") from None
        except ValueError:
            raise ReconcileError(f"{provider}'s usage API at {url} answered with something that is not JSON; "
                                 f"is the base URL right?") from None
    raise AssertionError("unreachable")


def pages(url: str, params: list[tuple[str, str]], headers: dict[str, str], provider: str, key_variable: str):
    """Every page of a paged admin API (the cursor from ``next_page`` while ``has_more``), as bodies."""
    page: str | None = None
    while True:
        body = get_json(url, [*params, *([("page", page)] if page else [])], headers, provider, key_variable)
        yield body
        page = body.get("next_page") if body.get("has_more") else None
        if not page:
            return


def read_page(body: dict, url: str, provider: str, bucket_start, line) -> list[dict]:
    """The lines of one page of buckets holding results; a page not shaped as documented is an
    error that says so."""
    return read_rows(body, url, provider, lambda: [line(bucket_start(bucket), result)
                                                   for bucket in body.get("data") or []
                                                   for result in bucket.get("results") or []])


def read_rows(body: dict, url: str, provider: str, read) -> list:
    """``read()``, with any sign of an unexpected shape turned into an error that says so."""
    try:
        return read()
    except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise ReconcileError(f"{provider}'s usage API at {url} answered a page we cannot read ({type(exc).__name__}: "
                             f"{str(exc)[:100]}); nothing was compared. Try again; if it persists, the API may have "
                             f"changed: report it with the page's first lines.") from None


def _retry_after(value: str | None, attempt: int) -> float:
    try:
        return min(MAX_WAIT_S, max(0.0, float(value))) if value else min(MAX_WAIT_S, 2.0 ** attempt)
    except ValueError:
        return min(MAX_WAIT_S, 2.0 ** attempt)


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        error = body.get("error") or {}
        return str(error.get("message") or "")[:300] if isinstance(error, dict) else str(error)[:300]
    except (ValueError, OSError):
        return ""


def _explain(status: int, message: str, provider: str, key_variable: str, url: str) -> str:
    said = f" ({provider} said: {message})" if message else ""
    if status in (401, 403):
        return (f"{provider} refused the admin key in {key_variable} with {status}{said}. The usage API needs an "
                f"organization admin key, not an ordinary API key: create one in the provider's console "
                f"(organization settings, admin keys) and set {key_variable} to it.")
    if status == 429:
        return f"{provider}'s usage API kept answering 429 (rate limited) after {MAX_TRIES} tries{said}; try later."
    return f"{provider}'s usage API at {url} answered {status}{said}."


def rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: object) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(dt.UTC)
