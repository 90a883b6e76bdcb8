"""The daily reconciliation: the month so far against each provider whose admin key is set.

Run by the proxy's housekeeping (evaluate.Evaluator starts it on a thread of its own, so alerts
never wait for a provider; one replica at a time), once per UTC day, within http.RUN_DEADLINE_S:
it covers the first of the month (UTC) up to today 00:00, stores the result
(store/reconciliations.py) for ``aispendtrack reconcile``'s readers (the API, the page), and
returns an alert when the month's difference passes ``[reconcile]`` in alerts.toml:

    [reconcile]
    percent = 2.0    # of the provider's figure
    min_usd = 1.0    # and at least this many dollars

One alert per provider and month (its dedupe key names both), however often the check runs.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from pricing import PriceBook

from .. import config_files, notify
from ..money import usd
from ..store import reading, writing
from ..store import reconciliations as rows
from . import PROVIDERS, ReconcileError, admin_key, bounded, total, unpriced
from .check import DAY, check

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Threshold:
    percent: float = 2.0
    min_usd: float = 1.0


def threshold(home: Path) -> Threshold:
    section = config_files.read(home, config_files.ALERTS).document.get("reconcile", {})
    return Threshold(float(section.get("percent", Threshold.percent)), float(section.get("min_usd", Threshold.min_usd)))


def base_url(provider: str, base_urls: dict[str, str]) -> str:
    """Where the provider's usage API is asked (and its admin key sent): its upstream when one is set."""
    return (base_urls.get(provider) or PROVIDERS[provider].DEFAULT_BASE_URL).rstrip("/")


def warn_of_admin_keys(base_urls: dict[str, str]) -> None:
    """Said once, at start, for each admin key that goes elsewhere than the provider's own API (a
    gateway set as the upstream gets the organization's admin key)."""
    for name, api in PROVIDERS.items():
        base = base_url(name, base_urls)
        if admin_key(api) and base != api.DEFAULT_BASE_URL:
            parts = urlsplit(base)  # its host alone: a URL may carry a login
            log.warning("the %s admin key goes to %s://%s for the daily reconciliation (the %s upstream), not to "
                        "%s: unset it if that host must not have it (docs/reconciliation.md)", name, parts.scheme,
                        parts.netloc.rpartition("@")[2][:200], name, api.DEFAULT_BASE_URL)


def run(db: Path, home: Path, book: PriceBook, base_urls: dict[str, str], now: dt.datetime) -> list:
    """Check every provider with an admin key not yet checked today; (dedupe key, alert) for those over."""
    end = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = (end - DAY).replace(day=1)  # the month of yesterday: on the 1st, the whole previous month
    limit = threshold(home)
    alerts = []
    for provider, api in PROVIDERS.items():
        key = admin_key(api)
        if key is None:
            continue
        with reading(db) as con:
            done = rows.last_checked(con, provider)
        if done is not None and done >= end:
            continue
        try:
            with bounded():
                lines = check(db, book, provider, base_url(provider, base_urls), key, start, end, now)
            summary = {**total(lines), "theirs_unpriced": unpriced(lines)}
        except ReconcileError as exc:
            log.error("reconciliation with %s failed: %s", api.NAME, exc)
            continue
        differing = [line for line in lines if line["status"] != "match"]
        with writing(db) as con:
            rows.record(con, provider, start, end, now, summary, differing)
        if _over(summary, limit):
            alerts.append((f"reconcile:{provider}:{start:%Y-%m}", _alert(api.NAME, start, end, summary, differing)))
    return alerts


def _over(summary: dict, limit: Threshold) -> bool:
    """Past the threshold in dollars, or differing in usage we cannot price (in no dollar figure,
    so no threshold would ever see it)."""
    return _over_in_dollars(summary, limit) or bool(summary["theirs_unpriced"])


def _over_in_dollars(summary: dict, limit: Threshold) -> bool:
    percent = summary["difference_percent"]
    return (percent is not None and abs(percent) >= limit.percent
            and abs(summary["difference_usd"]) >= Decimal(str(limit.min_usd)))


def _alert(name: str, start: dt.datetime, end: dt.datetime, summary: dict, differing: list[dict]) -> notify.Alert:
    difference, percent, unpriced = summary["difference_usd"], summary["difference_percent"], summary["theirs_unpriced"]
    more = f"{name} reports {usd(difference)} more" if difference > 0 else f"the proxy recorded {usd(-difference)} more"
    days = sorted({f"{line['bucket']:%Y-%m-%d}" for line in differing})
    title = (f"AiSpendTrack: {name} usage differs by {percent:.1f}% this month" if percent is not None and difference
             else f"AiSpendTrack: {name} usage of a model without a price differs this month")
    without = (f" Usage of {', '.join(unpriced)} differs too, and has no price here, so it is in no dollar figure."
               if unpriced else "")
    return notify.Alert(
        "reconcile", title,
        f"From {start:%Y-%m-%d} to {end - DAY:%Y-%m-%d} (UTC) {more} than the proxy: "
        f"{usd(summary['ours_cost_usd'])} recorded, {usd(summary['theirs_cost_usd'])} by {name}.{without} "
        f"Days that differ: {', '.join(days) or 'none'}. Calls that went around the proxy show as untracked in "
        f"`aispendtrack reconcile --provider {name.lower()} --since {start:%Y-%m-%d}`.",
        {"provider": name.lower(), "difference_usd": float(difference), "difference_percent": percent,
         "days": days, "unpriced_models": unpriced})
