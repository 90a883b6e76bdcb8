"""Our side split among the provider's API keys, for lines per provider key and project.

Our rows never hold a provider key (only the proxy's own ``ask_`` keys), so which provider key a
recorded call used is not known. What is known: per bucket and model, our totals and each
provider key's. So, per bucket and model:

- no provider key has usage there: ours stays on a line of its own, with no key (``over``);
- exactly one set of the provider's keys adds up to ours, every count equal: ours is theirs,
  key by key; the other keys went around the proxy;
- else, with one provider key only: ours is all that key's; the rest of it went around the proxy
  (a key used both through and around the proxy);
- else (several keys, no one way to add up to ours): ours stays on a line with no key, and every
  provider key of that bucket shows its whole usage; ``--by hour`` makes this rarer.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from decimal import Decimal

MAX_KEYS = 12  # per bucket and model: 4,096 sets to try at most; beyond, ours is not split

Price = Callable[[str | None, dt.datetime, dict], Decimal]


def attribute(ours: list[dict], theirs: list[dict], price: Price, kinds: tuple[str, ...]) -> list[dict]:
    """``ours`` (per bucket and model) as lines per bucket, model, ``api_key_id`` and ``project``."""
    per_key: dict[tuple, dict[tuple, dict]] = {}
    for line in theirs:
        into = per_key.setdefault((line["bucket"], line["model"]), {}).setdefault(
            (line.get("api_key_id"), line.get("project")), {})
        for name in ("requests", *kinds):
            if line.get(name) is not None:
                into[name] = into.get(name, 0) + line[name]
    split = []
    for line in ours:
        found = per_key.get((line["bucket"], line["model"]), {})
        split += _split(line, found, price, kinds)
    return split


def _split(line: dict, found: dict[tuple, dict], price: Price, kinds: tuple[str, ...]) -> list[dict]:
    names = [name for name in ("requests", *kinds) if all(name in usage for usage in found.values())
             and (name != "requests" or line.get("requests") is not None)]  # None: not counted (purged)
    wanted = tuple(int(line.get(name) or 0) for name in names)
    keys = _matching(found, names, wanted)
    if keys is None and len(found) == 1:
        [(key_id, project)] = found
        return [{**line, "api_key_id": key_id, "project": project}]
    if not keys:
        return [{**line, "api_key_id": None, "project": None}]
    costs = [price(line["model"], line["bucket"], found[key]) for key in keys]
    whole = sum(costs, Decimal(0))
    ours_cost = Decimal(line["cost_usd"]) if line.get("cost_usd") is not None else None
    lines, given = [], Decimal(0)
    for n, (key, cost) in enumerate(zip(keys, costs, strict=True)):
        share = None
        if ours_cost is not None:  # our cost in the keys' proportions; the last takes the rounding
            share = ours_cost - given if n == len(keys) - 1 else \
                (ours_cost * cost / whole if whole else ours_cost / len(keys))
            given += share
        lines.append({**line, **{name: found[key].get(name) for name in names}, "cost_usd": share,
                      "api_key_id": key[0], "project": key[1]})
    return lines


def _matching(found: dict[tuple, dict], names: list[str], wanted: tuple[int, ...]) -> list[tuple] | None:
    """The one set of keys whose usage adds up to ``wanted``; None if none or more than one does."""
    if not found or len(found) > MAX_KEYS:
        return None
    keys = sorted(found, key=lambda k: tuple(part or "" for part in k))
    vectors = {key: tuple(int(found[key].get(name) or 0) for name in names) for key in keys}
    matches = [chosen for size in range(1, len(keys) + 1) for chosen in itertools.combinations(keys, size)
               if tuple(map(sum, zip(*(vectors[k] for k in chosen), strict=True))) == wanted]
    return list(matches[0]) if len(matches) == 1 else None
