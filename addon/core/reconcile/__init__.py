"""Reconciliation: our rows beside the provider's own usage report, per UTC bucket (day or hour)
and model, and per provider API key and project where asked (keys.py splits our side among them).

Each line says:
- ``match``: every token kind (and the request count, where the provider reports one) agrees
  within the tolerance;
- ``untracked``: the provider saw more (calls that went around the proxy, a key we do not know);
- ``over``: we recorded more (calls the provider did not bill);
- ``drift``: the kinds disagree both ways (e.g. the same tokens split differently between cache
  and input).
Buckets that ended less than ``SETTLE`` ago are marked ``pending``: providers complete them late.
Their cost is their tokens at our prices (the price book our rows were priced with), so a
difference in cost is a difference in usage, or rows priced before a price change (run
``aispendtrack reprice`` first).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from decimal import Decimal
from types import ModuleType

from . import anthropic, keys, openai
from .http import ReconcileError, bounded
from .kinds import KINDS, UNITS

PROVIDERS: dict[str, ModuleType] = {"openai": openai, "anthropic": anthropic}
SETTLE = dt.timedelta(hours=24)
DIMS = ("bucket", "model")                     # what a line is per, always
KEY_DIMS = ("api_key_id", "project")           # and, grouped by provider key: its id and project (workspace)
BY = {"day": "bucket", "hour": "bucket", "model": "model", "api-key": "api_key_id", "project": "project"}

__all__ = ["KINDS", "PROVIDERS", "UNITS", "ReconcileError", "admin_key", "bounded", "compare", "regroup", "total",
           "unpriced"]


def admin_key(api: ModuleType) -> str | None:
    """The provider's organization admin key from its variable (api.KEY_VARIABLE), without the line
    break a secret file often ends with (sent in a header, the break made the request library refuse it
    with an error quoting the whole key); None when unset."""
    return os.environ.get(api.KEY_VARIABLE, "").strip() or None

Price = Callable[..., Decimal | None]  # (model, bucket, usage[, service_tier, image_size, region])


def compare(ours: list[dict], theirs: list[dict], price: Price, width: dt.timedelta, now: dt.datetime,
            tolerance: float = 0.0, counts_requests: bool = True, by_key: bool = False) -> list[dict]:
    """One line per (bucket, model) seen on either side; ``price(model, bucket, usage, service_tier,
    image_size)`` prices each of theirs (check.pricer), before they are summed.
    ``counts_requests``: whether the provider's report counts requests (Anthropic's legacy one does not).
    ``by_key``: theirs is per provider key and project too; ours is split among them (keys.attribute)."""
    dims = (*DIMS, *KEY_DIMS) if by_key else DIMS
    theirs = _priced(theirs, price)
    if by_key:
        ours = keys.attribute(ours, theirs, lambda model, bucket, usage: price(model, bucket, usage) or Decimal(0),
                               KINDS)
    mine = _by_key(ours, dims)
    provider = _by_key(theirs, dims)
    # Buckets read from the rollups (their raw calls purged: usage_totals.per_bucket) count no requests.
    uncounted = {line["bucket"] for line in ours if line.get("requests") is None}
    lines = []
    for key in sorted(set(mine) | set(provider), key=lambda k: tuple(part or "" for part in k)):
        o, t = mine.get(key, {}), provider.get(key, {})
        line: dict = dict(zip(dims, key, strict=True))
        bucket = line["bucket"]
        for kind in ("requests", *KINDS):
            line[f"ours_{kind}"] = None if kind == "requests" and bucket in uncounted else int(o.get(kind) or 0)
            line[f"theirs_{kind}"] = None if kind == "requests" and not counts_requests else int(t.get(kind) or 0)
        # Our calls with usage but no price: unpriced, as the provider's side without one, never $0.
        line["ours_cost_usd"] = Decimal(o["cost_usd"]) if o.get("cost_usd") is not None else None if o else Decimal(0)
        line["theirs_cost_usd"] = (Decimal(t["cost_usd"]) if "cost_usd" in t else None) if t else Decimal(0)
        line.update(_difference(line), status=_status(line, tolerance), pending=bucket + width > now - SETTLE)
        lines.append(line)
    return lines


def _priced(theirs: list[dict], price: Price) -> list[dict]:
    """The provider's lines, each with its cost at our prices: a batch line at the batch rate, images
    by their size, a line of US-only inference with its premium. A batch line counts no requests: we
    store a batch as one row per model, the provider counts each of its requests."""
    found = []
    for line in theirs:
        line = dict(line)
        tier, size, region = line.pop("service_tier", None), line.pop("image_size", None), line.pop("region", None)
        line["cost_usd"] = price(line["model"], line["bucket"], line, tier, size, region)
        if tier == "batch":
            line["requests"] = None
        found.append(line)
    return found


def regroup(lines: list[dict], by: tuple[str, ...], tolerance: float = 0.0) -> list[dict]:
    """Lines summed over what ``by`` (names of ``BY``) leaves out: ("day",) sums the models of a day,
    ("model",) the days of a model, ("api-key",) everything of a provider key (its project kept:
    a key belongs to one); ("day", "model") is the lines as they are."""
    kept = {BY[name] for name in by} | ({"project"} if "api-key" in by else set())
    if lines and kept == {name for name in (*DIMS, *KEY_DIMS) if name in lines[0]}:
        return lines
    groups: dict = {}
    for line in lines:
        dims = {name: line[name] if name in kept else None for name in (*DIMS, *KEY_DIMS) if name in line}
        into = groups.setdefault(tuple(dims.values()), {**dims, "pending": False})
        for name, value in line.items():
            if name.endswith("_usd") and name.startswith(("ours_", "theirs_")):  # the priced parts' sum
                into[name] = None if value is None and into.get(name) is None else (into.get(name) or 0) + (value or 0)
            elif name.startswith(("ours_", "theirs_")):  # a count with a part not counted is not counted
                into[name] = None if value is None or name in into and into[name] is None else \
                    into.get(name, 0) + value
        into["pending"] = into["pending"] or line["pending"]
    for into in groups.values():
        into.update(_difference(into), status=_status(into, tolerance))
    return list(groups.values())


def total(lines: list[dict]) -> dict:
    """The sums over ``lines``, with the cost difference in USD and percent of the provider's."""
    sums: dict = {"bucket": None, "model": "TOTAL"}
    names = [f"{side}_{kind}" for kind in ("requests", *KINDS) for side in ("ours", "theirs")]
    for name in [*names, "ours_cost_usd", "theirs_cost_usd"]:  # an empty month too has every sum, all 0
        values = [line[name] for line in lines if line[name] is not None]
        zero = Decimal(0) if name.endswith("_usd") else 0
        counted = len(values) == len(lines) or name.endswith("_usd")  # requests: none missing from the sum
        sums[name] = sum(values, zero) if counted else None
    sums.update(_difference(sums))
    sums["status"] = "match" if all(line["status"] == "match" for line in lines) else "differs"
    sums["pending"] = any(line["pending"] for line in lines)
    return sums


def unpriced(lines: list[dict]) -> list[str]:
    """The models whose usage differs where either side has no price at ours: in no dollar figure of
    ``total`` (not as $0 either), so no threshold in dollars would ever see them."""
    return sorted({str(line["model"]) for line in lines
                   if None in (line["theirs_cost_usd"], line["ours_cost_usd"]) and line["status"] != "match"})


def _difference(line: dict) -> dict:
    """What the provider has more than we do, in USD and in percent of the provider's cost."""
    ours, theirs = line.get("ours_cost_usd") or Decimal(0), line.get("theirs_cost_usd") or Decimal(0)
    return {"difference_usd": theirs - ours,
            "difference_percent": float((theirs - ours) / theirs * 100) if theirs else None}


def _by_key(lines: list[dict], dims: tuple[str, ...]) -> dict[tuple, dict]:
    merged: dict[tuple, dict] = {}
    for line in lines:
        into = merged.setdefault(tuple(line.get(name) for name in dims), {})
        for name, value in line.items():
            if name in dims or name in KEY_DIMS or value is None:
                continue
            into[name] = into.get(name, 0) + value
    return merged


def _status(line: dict, tolerance: float) -> str:
    more = less = False
    for kind in ("requests", *KINDS):
        ours, theirs = line[f"ours_{kind}"], line[f"theirs_{kind}"]
        if ours is None or theirs is None:  # not counted on one side
            continue
        if abs(theirs - ours) <= tolerance * max(ours, theirs):
            continue
        more, less = more or theirs > ours, less or theirs < ours
    if more and less:
        return "drift"
    return "untracked" if more else "over" if less else "match"
