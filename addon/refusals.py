"""Every answer the proxy gives in place of the provider's, in the shape the caller's SDK parses.

Each message says what happened and what to do about it; the code is machine-readable."""

from __future__ import annotations

import datetime as dt
import logging
import re

from mitmproxy import http

from .core import metrics
from .core.budgets import BudgetRefusal
from .core.limits import Refusal
from .core.money import usd
from .core.wording import plural
from .providers import Provider

log = logging.getLogger(__name__)

KEY_HEADER = "x-aispendtrack-key"
# The refusal codes as the metrics count them (aispendtrack_refusals_total{reason=...}).
_REASONS = {"aispendtrack_limit_reached": "limit", "aispendtrack_budget_exceeded": "budget",
            "aispendtrack_too_many_bad_keys": "too_many_bad_keys", "aispendtrack_invalid_key": "bad_key",
            "aispendtrack_missing_key": "bad_key", "aispendtrack_key_in_url": "bad_key"}


# A path as the log shows it: up to the first character no plain API path has (a query, an escape,
# ';', '#', '='), which may begin a key a client put in its URL, with any key-shaped token cut too.
_PLAIN = re.compile(r"[A-Za-z0-9/._:-]{0,200}")
_KEY_SHAPED = re.compile(r"(?<![A-Za-z0-9])(sk-|AIza|ya29\.|ask_|ast_|gsk_|xai-|ABSK|eyJ)[A-Za-z0-9_.-]{6,}")


def logged_path(path: str) -> str:
    plain = _PLAIN.match(path)
    kept = plain.group(0) if plain else ""
    return _KEY_SHAPED.sub(r"\1…", kept) + ("…" if len(kept) < len(path) else "")


def refuse(flow: http.HTTPFlow, provider: Provider, status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> None:
    body = provider.error_body(status, message, code)
    flow.response = http.Response.make(status, body, {"content-type": "application/json", **(headers or {})})
    log.info("refused %s %s: %s", flow.request.method, logged_path(flow.request.path), code)
    metrics.current().refused(_REASONS.get(code, "other"))


def bad_key(flow: http.HTTPFlow, provider: Provider, key_sent: bool, key_in_query: bool = False) -> None:
    if key_in_query and not key_sent:
        refuse(flow, provider, 401, "aispendtrack_key_in_url",
               f"Send your AiSpendTrack key in the {KEY_HEADER} header. A key in the URL is removed and "
               f"never accepted, because URLs end up in logs; consider it exposed and replace it "
               f"(`aispendtrack keys create`, then `aispendtrack keys revoke ID`).")
    elif not key_sent:
        refuse(flow, provider, 401, "aispendtrack_missing_key",
               f"Missing {KEY_HEADER} header. Add it to your client, e.g. "
               f"default_headers={{'{KEY_HEADER}': 'ask_...'}}; create a key with "
               f"`aispendtrack keys create --name NAME`.")
    else:
        refuse(flow, provider, 401, "aispendtrack_invalid_key",
               f"The {KEY_HEADER} header is not an active AiSpendTrack key (unknown or revoked). "
               f"Check it with `aispendtrack keys list`; a new key works within 2 seconds of creation.")


def too_many_bad_keys(flow: http.HTTPFlow, provider: Provider, address: str, wait: int) -> None:
    refuse(flow, provider, 429, "aispendtrack_too_many_bad_keys",
           f"Too many calls with a wrong {KEY_HEADER} from {address}; calls from this address are "
           f"refused for {wait} s. Check the key with `aispendtrack keys list`.", {"retry-after": str(wait)})


def limit_reached(flow: http.HTTPFlow, provider: Provider, key_id: int, refusal: Refusal) -> None:
    """A team's limit without its figures: they count the team's other keys' calls, which are not
    the caller's to know (as a budget over other keys' spend)."""
    now = dt.datetime.now(dt.UTC)
    wait = refusal.retry_after(now)
    period = "hour" if refusal.limit == "per-hour" else "month"
    option = "--per-hour" if refusal.limit == "per-hour" else "--per-month"
    resets = f"{refusal.resets_at:%Y-%m-%d %H:%M:%S} UTC (in {wait:,} s)"
    if refusal.team is not None:
        message = (f"AiSpendTrack team limit reached: the requests per {period} limit of team {refusal.team}, set "
                   f"by the administrator over all the team's keys, blocks this call until {resets}. It counts "
                   f"other keys' calls too, so its figures are not shown; ask the administrator of this proxy.")
    else:
        message = (f"AiSpendTrack limit reached for key {key_id}: {plural(refusal.size, 'request')} per {period}. "
                   f"It resets at {resets}. Raise it with `aispendtrack keys set-limit {key_id} {option} N` or "
                   f"`aispendtrack keys set-plan {key_id} PLAN`.")
    refuse(flow, provider, 429, "aispendtrack_limit_reached", message, {"retry-after": str(wait)})


def budget_exceeded(flow: http.HTTPFlow, provider: Provider, key_id: int, refusal: BudgetRefusal,
                    now: dt.datetime) -> None:
    """The figures only to the key whose own calls the budget counts: anyone else's spend (other
    keys', a whole organisation's) is not the caller's to know."""
    budget, until = refusal.budget, f"{refusal.resets_at:%Y-%m-%d %H:%M} UTC"
    if budget.owned_by(key_id):
        message = (f"AiSpendTrack budget exceeded for {budget.label()}: {usd(refusal.spent)} spent of the "
                   f"{refusal.period} budget of {usd(refusal.size)}. Calls are blocked until {until}; raise it "
                   f"with `aispendtrack budgets set {budget.set_args} --{refusal.period} USD --block`.")
    else:
        message = (f"AiSpendTrack budget exceeded: a {refusal.period} budget set by the administrator over "
                   f"{budget.label()} blocks this call until {until}. It counts other keys' calls too, so "
                   f"its figures are not shown; ask the administrator of this proxy.")
    refuse(flow, provider, 429, "aispendtrack_budget_exceeded", message, {"retry-after": str(refusal.retry_after(now))})


def upstream_failure(flow: http.HTTPFlow, provider: Provider, message: str, timed_out: bool,
                     timeout: float) -> tuple[int, str, str]:
    """(status, outcome, message) for a call whose upstream never answered, or whose answer was cut
    before any of it reached the client (a response not streamed is read whole first)."""
    where = f"{provider.name} upstream {flow.request.host}:{flow.request.port}"
    if timed_out:
        return 504, "upstream_timeout", (
            f"AiSpendTrack: the {where} sent no response within {timeout:.0f} s "
            f"(aispendtrack_upstream_timeout_s). The call may or may not have run at the provider.")
    if "certificate" in message.lower():
        return 502, "upstream_failed", (
            f"AiSpendTrack refused the {where}: {message[:300]}. Upstream certificates are always "
            f"verified; for a private CA start the proxy with --upstream-ca CA.pem.")
    if flow.response is not None:  # its head came, its body was cut: nothing had reached the client
        return 502, "upstream_failed", (
            f"AiSpendTrack: the {where} answered {flow.response.status_code} but closed the connection before "
            f"the end of its body ({message.split(': ', 1)[0][:200]}). The call may have run at the provider.")
    # The flag that sets this provider's upstream (cli/proxy.py; "--upstream" alone named none of them).
    flag = (f"--{provider.name}-upstream" if provider.name in ("openai", "anthropic")
            else f"--upstream {provider.name}=URL")
    return 502, "upstream_failed", (
        f"AiSpendTrack could not get a response from the {where}: {message.split(': ', 1)[0][:200]}. "
        f"Check the proxy's {flag} setting and that the provider is reachable.")

