"""Anthropic's legacy Admin API reports: ``/v1/organizations/usage_report/messages`` (tokens by kind
per bucket and model, no request counts) and ``/v1/organizations/cost_report`` (billed per day).

Anthropic's docs now point new integrations to the Usage and Cost Analytics API
(anthropic_analytics.py); this pair is what anthropic.py falls back to where that one is refused.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from pricing import regions

from .http import MAX_REQUESTS_PER_BUCKET, amount, label, model_name, pages, parse_rfc3339, read_page, rfc3339, whole

NAME = "Anthropic"
KEY_VARIABLE = "ANTHROPIC_ADMIN_KEY"
HEADERS = {"anthropic-version": "2023-06-01"}
_PAGE = {"1d": "31", "1h": "168"}  # the most buckets a page may hold


KEY_GROUPS = [("group_by[]", "api_key_id"), ("group_by[]", "workspace_id")]  # a key's id and its workspace
# Message Batches are billed at the batch rate, US-only inference at 1.1 times (pricing/regions.py).
PRICE_GROUPS = [("group_by[]", "service_tier"), ("group_by[]", "inference_geo")]


def fetch(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime, width: str,
          by_key: bool = False) -> list[dict]:
    url = f"{base_url.rstrip('/')}/v1/organizations/usage_report/messages"
    params = [("starting_at", rfc3339(start)), ("ending_at", rfc3339(end)), ("bucket_width", width),
              ("group_by[]", "model"), *PRICE_GROUPS, *(KEY_GROUPS if by_key else []), ("limit", _PAGE[width])]
    return [found for body in _pages(url, params, admin_key) for found in read_page(body, url, NAME, _start, line)]


def fetch_costs(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime) -> dict[dt.datetime, Decimal]:
    """Billed per UTC day: every cost line (tokens, web search, code execution) summed. Amounts
    come in cents, as decimal strings; priority-tier costs are not in this report."""
    url = f"{base_url.rstrip('/')}/v1/organizations/cost_report"
    params = [("starting_at", rfc3339(start)), ("ending_at", rfc3339(end)), ("bucket_width", "1d"), ("limit", "31")]
    days: dict[dt.datetime, Decimal] = {}
    for body in _pages(url, params, admin_key):
        for day, cents in read_page(body, url, NAME, _start, lambda at, r: (at, amount(r["amount"], "amount"))):
            days[day] = days.get(day, Decimal(0)) + cents / 100
    return days


def fetch_line_items(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime) -> dict[str, Decimal]:
    """Billed in [start, end) per ``description`` ("Claude Sonnet 4 Usage - Input Tokens", "Web
    Search Usage", ...), in dollars."""
    url = f"{base_url.rstrip('/')}/v1/organizations/cost_report"
    params = [("starting_at", rfc3339(start)), ("ending_at", rfc3339(end)), ("bucket_width", "1d"),
              ("group_by[]", "description"), ("limit", "31")]
    items: dict[str, Decimal] = {}
    for body in _pages(url, params, admin_key):
        for name, cents in read_page(body, url, NAME, _start, lambda at, r: (
                label(r.get("description") or r.get("cost_type")) or "(none)", amount(r["amount"], "amount"))):
            items[name] = items.get(name, Decimal(0)) + cents / 100
    return items


def _pages(url: str, params: list[tuple[str, str]], admin_key: str):
    return pages(url, params, {"x-api-key": admin_key, **HEADERS}, NAME, KEY_VARIABLE)


def _start(bucket: dict) -> dt.datetime:
    return parse_rfc3339(bucket["starting_at"])


def line(at: dt.datetime, result: dict) -> dict:
    """Our token kinds from a result (the analytics API's usage object has the same fields)."""
    creation = result.get("cache_creation") or {}
    tools = result.get("server_tool_use") or {}
    one_hour = whole(creation, "ephemeral_1h_input_tokens")
    return {"bucket": at, "model": model_name(result.get("model")), "api_key_id": label(result.get("api_key_id")),
            "project": label(result.get("workspace_id")), "requests": None,  # the report does not count them
            "input_tokens": whole(result, "uncached_input_tokens"),
            "cache_read_tokens": whole(result, "cache_read_input_tokens"),
            "cache_write_tokens": whole(creation, "ephemeral_5m_input_tokens") + one_hour,
            "cache_write_1h_tokens": one_hour, "output_tokens": whole(result, "output_tokens"),
            "web_search_requests": whole(tools, "web_search_requests", MAX_REQUESTS_PER_BUCKET),
            "service_tier": "batch" if result.get("service_tier") == "batch" else None,
            "region": regions.US_ONLY if result.get("inference_geo") == regions.US_ONLY else None}
