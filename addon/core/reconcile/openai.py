"""OpenAI's organisation Usage API: ``/v1/organization/usage/completions`` (grouped by ``batch``
too, so that batch requests are priced at the batch rate), ``/embeddings``, and the endpoints of the
APIs billed in other units: ``/images`` (images), ``/audio_speeches`` (characters) and
``/audio_transcriptions`` (seconds).

``input_tokens`` there includes the cached ones; ours are split, so uncached = input - cached.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from .http import MAX_REQUESTS_PER_BUCKET, Implausible, amount, label, model_name, pages, read_page, whole
from .kinds import KINDS

NAME = "OpenAI"
KEY_VARIABLE = "OPENAI_ADMIN_KEY"
DEFAULT_BASE_URL = "https://api.openai.com"
ENDPOINTS = ("completions", "embeddings", "images", "audio_speeches", "audio_transcriptions")
# What else a result is grouped by, because its price depends on it: batch requests cost half, an image its size.
_PRICED_BY = {"completions": [("group_by", "batch")], "images": [("group_by", "size")]}
_PAGE = {"1d": "31", "1h": "168"}  # the most buckets a page may hold


def fetch(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime, width: str,
          by_key: bool = False) -> list[dict]:
    """Usage per bucket and model in [start, end), as our token kinds; per API key and project too
    when ``by_key``."""
    lines = []
    group = [("group_by", "model"), *([("group_by", "api_key_id"), ("group_by", "project_id")] if by_key else [])]
    for endpoint in ENDPOINTS:
        url = f"{base_url.rstrip('/')}/v1/organization/usage/{endpoint}"
        params = [*_span(start, end), ("bucket_width", width), *group, *_PRICED_BY.get(endpoint, []),
                  ("limit", _PAGE[width])]
        for body in pages(url, params, _headers(admin_key), NAME, KEY_VARIABLE):
            lines += read_page(body, url, NAME, _bucket_start, _UNITS.get(endpoint, _line))
    return lines


def fetch_costs(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime) -> dict[dt.datetime, Decimal]:
    """What the Costs API says was billed per UTC day in [start, end): every line item and project
    (fine-tuning, tools, ... included), so it is the invoice's view, not only what a proxy sees."""
    url = f"{base_url.rstrip('/')}/v1/organization/costs"
    days: dict[dt.datetime, Decimal] = {}
    params = [*_span(start, end), ("bucket_width", "1d"), ("limit", "31")]
    for body in pages(url, params, _headers(admin_key), NAME, KEY_VARIABLE):
        for day, value in read_page(body, url, NAME, _bucket_start, _billed):
            days[day] = days.get(day, Decimal(0)) + value
    return days


def fetch_line_items(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime) -> dict[str, Decimal]:
    """What the Costs API says was billed in [start, end) per line item ("gpt-4o, input",
    "fine-tuning training", ...), every project summed."""
    url = f"{base_url.rstrip('/')}/v1/organization/costs"
    items: dict[str, Decimal] = {}
    params = [*_span(start, end), ("bucket_width", "1d"), ("group_by", "line_item"), ("limit", "31")]
    for body in pages(url, params, _headers(admin_key), NAME, KEY_VARIABLE):
        for item, value in read_page(body, url, NAME, _bucket_start,
                                     lambda at, r: (label(r.get("line_item")) or "(none)", _billed(at, r)[1])):
            items[item] = items.get(item, Decimal(0)) + value
    return items


def _span(start: dt.datetime, end: dt.datetime) -> list[tuple[str, str]]:
    return [("start_time", str(int(start.timestamp()))), ("end_time", str(int(end.timestamp())))]


def _headers(admin_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {admin_key}"}


def _bucket_start(bucket: dict) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(bucket["start_time"]), dt.UTC)


def _billed(at: dt.datetime, result: dict) -> tuple[dt.datetime, Decimal]:
    return at, amount((result.get("amount") or {}).get("value") or 0, "amount.value")


def _line(at: dt.datetime, result: dict) -> dict:
    cached, given = whole(result, "input_cached_tokens"), whole(result, "input_tokens")
    if cached > given:
        raise Implausible(f"input_cached_tokens={cached} is more than input_tokens={given}, which includes them")
    return {**_counted(at, result), "input_tokens": given - cached, "cache_read_tokens": cached,
            "output_tokens": whole(result, "output_tokens"), "service_tier": "batch" if result.get("batch") else None}


def _counted(at: dt.datetime, result: dict) -> dict:
    """What every usage result has: its group, its requests; every count still 0."""
    return {"bucket": at, "model": model_name(result.get("model")), "api_key_id": label(result.get("api_key_id")),
            "project": label(result.get("project_id")),
            "requests": whole(result, "num_model_requests", MAX_REQUESTS_PER_BUCKET),
            **dict.fromkeys(KINDS, 0)}


def _in_units(ours: str, theirs: str):
    """A result of an endpoint billed in ``theirs`` (its field), as our unit ``ours``."""
    def line(at: dt.datetime, result: dict) -> dict:
        return {**_counted(at, result), ours: whole(result, theirs)}
    return line


def _images(at: dt.datetime, result: dict) -> dict:
    """Images, and their size (DALL·E's price per image depends on it; the quality is not reported)."""
    size = result.get("size")
    return {**_in_units("images", "images")(at, result), "image_size": size if isinstance(size, str) else None}


_UNITS = {"images": _images, "audio_speeches": _in_units("characters", "characters"),
          "audio_transcriptions": _in_units("audio_seconds", "seconds")}
