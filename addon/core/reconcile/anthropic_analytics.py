"""Anthropic's Usage and Cost Analytics API (beta): ``/v1/organizations/analytics/usage`` (tokens by
kind and requests, per bucket and model) and ``/v1/organizations/analytics/cost`` (billed, in cents).

What the docs present as current. Its rows are flat (one per bucket and group, paged up to 1,000),
a request may span at most 31 days, and every request carries the beta header.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from . import anthropic_report
from .http import MAX_REQUESTS_PER_BUCKET, amount, data, label, pages, parse_rfc3339, read_rows, rfc3339, whole

NAME = anthropic_report.NAME
KEY_VARIABLE = anthropic_report.KEY_VARIABLE
HEADERS = {**anthropic_report.HEADERS, "anthropic-beta": "analytics-usage-cost-2026-08-24"}
SPAN = dt.timedelta(days=31)  # the longest range one request may cover


def fetch(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime, width: str,
          by_key: bool = False) -> list[dict]:
    url = f"{base_url.rstrip('/')}/v1/organizations/analytics/usage"

    def usage(body: dict) -> list[dict]:
        return [{**anthropic_report.line(parse_rfc3339(row["starting_at"]), {**row["usage"], **row["group"]}),
                 "requests": whole(row["usage"], "requests", MAX_REQUESTS_PER_BUCKET)}
                for row in data(body)]
    group = [("group_by[]", "model"), *anthropic_report.PRICE_GROUPS, *(anthropic_report.KEY_GROUPS if by_key else [])]
    return [found for body in _pages(url, start, end, width, group, admin_key)
            for found in read_rows(body, url, NAME, lambda body=body: usage(body))]


def fetch_costs(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime) -> dict[dt.datetime, Decimal]:
    """Billed per UTC day, every cost type included; ``amount`` is after discounts, in cents."""
    url = f"{base_url.rstrip('/')}/v1/organizations/analytics/cost"
    days: dict[dt.datetime, Decimal] = {}
    for body in _pages(url, start, end, "1d", [], admin_key):
        rows = read_rows(body, url, NAME, lambda body=body: [(parse_rfc3339(row["starting_at"]),
                                                              amount(row["cost"]["amount"], "cost.amount"))
                                                             for row in data(body)])
        for day, cents in rows:
            days[day] = days.get(day, Decimal(0)) + cents / 100
    return days


def fetch_line_items(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime) -> dict[str, Decimal]:
    """Billed in [start, end) per model and ``cost_type`` ("tokens", "web_search", "code_execution"), in dollars."""
    url = f"{base_url.rstrip('/')}/v1/organizations/analytics/cost"
    items: dict[str, Decimal] = {}
    group = [("group_by[]", "model"), ("group_by[]", "cost_type")]
    for body in _pages(url, start, end, "1d", group, admin_key):
        rows = read_rows(body, url, NAME, lambda body=body: [(_line_item(row["group"]),
                                                              amount(row["cost"]["amount"], "cost.amount"))
                                                             for row in data(body)])
        for name, cents in rows:
            items[name] = items.get(name, Decimal(0)) + cents / 100
    return items


def _line_item(group: dict) -> str:
    """"claude-sonnet-4-20250514, tokens"; a cost with no model (a tool's session) by its type alone."""
    return label(", ".join(str(group[name]) for name in ("model", "cost_type") if group.get(name))) or "(none)"


def _pages(url: str, start: dt.datetime, end: dt.datetime, width: str, group: list[tuple[str, str]],
           admin_key: str):
    """Every page of every window of at most ``SPAN`` in [start, end)."""
    headers = {"x-api-key": admin_key, **HEADERS}
    while start < end:
        stop = min(end, start + SPAN)
        params = [("starting_at", rfc3339(start)), ("ending_at", rfc3339(stop)), ("time_bucket_width", width),
                  *group, ("order_by", "time"), ("order", "asc"), ("limit", "1000")]
        yield from pages(url, params, headers, NAME, KEY_VARIABLE)
        start = stop
