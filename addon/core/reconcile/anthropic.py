"""Anthropic, as reconciliation sees it: the Usage and Cost Analytics API (anthropic_analytics.py),
which Anthropic's docs present as current, and its legacy usage and cost reports
(anthropic_report.py) where the analytics API is refused.

The analytics API is in beta and answers 400 to some organisations (those with HIPAA readiness);
a 400 or 404 from it switches this process to the legacy reports, with a warning that says so. A
refused key (401/403) is not retried elsewhere: the same key would be refused there too.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

from . import anthropic_analytics, anthropic_report
from .http import ReconcileError

NAME = anthropic_report.NAME
KEY_VARIABLE = anthropic_report.KEY_VARIABLE
DEFAULT_BASE_URL = "https://api.anthropic.com"
FALL_BACK_ON = (400, 404)

log = logging.getLogger(__name__)
RETRY_AFTER = dt.timedelta(hours=12)  # then the analytics API is asked again (access may have come)
_refused: dict[str, dt.datetime] = {}  # base URL -> when its analytics API refused us, in this process


def fetch(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime, width: str,
          by_key: bool = False) -> list[dict]:
    return _either("fetch", base_url, admin_key, start, end, width, by_key)


def fetch_costs(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime) -> dict[dt.datetime, Decimal]:
    return _either("fetch_costs", base_url, admin_key, start, end)


def fetch_line_items(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime) -> dict[str, Decimal]:
    return _either("fetch_line_items", base_url, admin_key, start, end)


def forget_refusals() -> None:
    _refused.clear()


def _either(name: str, base_url: str, *args):
    now = dt.datetime.now(dt.UTC)
    if now - _refused.get(base_url, now - RETRY_AFTER) >= RETRY_AFTER:
        try:
            return getattr(anthropic_analytics, name)(base_url, *args)
        except ReconcileError as exc:
            if exc.status not in FALL_BACK_ON:
                raise
            log.warning("Anthropic's analytics API refused the request (%s); reading its legacy usage and cost "
                        "reports instead.", exc)
            _refused[base_url] = now
    return getattr(anthropic_report, name)(base_url, *args)
