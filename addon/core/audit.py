"""The audit trail: every change made through the CLI or the API, with when, who, what and the
values before and after (``aispendtrack audit``, ``GET /api/v1/audit``).

``record`` is the one way in, called where each change is made, on the connection that makes it.
Who: the web API sets it per request (``acting_as``: ``admin:ID`` for an admin token, ``key:ID``
for a key); anything else is the CLI, ``cli:<os user>``.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import getpass
import json
from decimal import Decimal

_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("aispendtrack_actor", default=None)


def acting_as(who: str | None) -> None:
    """Who the changes of this request (or thread) are made by; None: the CLI's user."""
    _actor.set(who)


def actor() -> str:
    who = _actor.get()
    if who is not None:
        return who
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a container): its number
        import os
        return f"cli:uid {os.getuid()}"


UTC = dt.UTC


def change(before: object, after: object) -> str:
    """One line for a table: the fields that changed, ``plan: free -> pro``; created or removed as is."""
    if isinstance(before, dict) and isinstance(after, dict):
        changed = [f"{k}: {before.get(k)} -> {after.get(k)}" for k in sorted({*before, *after})
                   if before.get(k) != after.get(k)]
        return "; ".join(changed)[:120]
    if before is None:
        fields = after.items() if isinstance(after, dict) else ()
        return ", ".join(f"{k}: {v}" for k, v in fields)[:120]
    return f"removed {values(before)}"[:120]


def values(value: object) -> str | None:
    """Before/after values as stored: JSON, keys sorted; times and amounts as text (an amount without
    trailing zeros, so a stored 5.000000 and a given 5 read the same)."""
    return None if value is None else json.dumps(value, sort_keys=True, default=_text)


def _text(value: object) -> str:
    return format(value.normalize(), "f") if isinstance(value, Decimal) else str(value)


def record(con, action: str, target: str, before: object = None, after: object = None) -> None:
    """Append an entry: ``action`` like ``keys.revoke``, ``target`` like ``key:3``."""
    from .store import audit as audit_rows
    audit_rows.add(con, actor(), action, target, values(before), values(after))


def entries(con, since: str | None, tz: str | None = None, now: dt.datetime | None = None) -> list[dict]:
    """Entries from ``since`` on (``7d``, ``today``, a date or a time in ``tz``, as reports take it),
    oldest first, with before/after as values; ReportError when ``since`` or ``tz`` cannot be read."""
    from .reports import parse_tz, parse_when
    from .store import audit as audit_rows

    start = parse_when(since, parse_tz(tz or "UTC"), now or dt.datetime.now(dt.UTC), "since") if since else None
    rows = audit_rows.entries(con, start)
    for row in rows:
        for name in ("before", "after"):
            row[name] = None if row[name] is None else json.loads(row[name])
    return rows


def scrub(con, kind: str, value: str) -> None:
    """GDPR erase: the subject's identifier leaves every entry; the entries stay.

    Only where a value names this subject: the entry's target, a budget's scope (``customer`` and
    ``acme``), a field named for the kind, and in a key's own entries the key's name (often a
    person's). A team, a feature or another key that happens to have the same text keeps it."""
    from .store import audit as audit_rows
    target = f"{kind}:{value}"
    for entry_id, was, before, after in audit_rows.naming(con, target, json.dumps(value)):
        own = was == target
        new = [None if v is None else values(_erased(json.loads(v), kind, value, own)) for v in (before, after)]
        if own or new != [before, after]:  # an entry whose text only looked like the subject stays as it was
            audit_rows.rewrite(con, entry_id, f"{kind}:{audit_rows.ERASED}" if own else was, *new)


def _erased(value: object, kind: str, subject: str, own: bool) -> object:
    from .store.audit import ERASED
    if isinstance(value, list):
        return [_erased(v, kind, subject, own) for v in value]
    if not isinstance(value, dict):
        return value
    named = {kind} | ({"scope_value"} if value.get("scope") == kind else set())
    return {k: ERASED if (k in named and v == subject) or (own and kind == "key" and k == "name")
            else _erased(v, kind, subject, own) for k, v in value.items()}
