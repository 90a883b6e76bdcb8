"""``/api/v1/purge`` and ``/api/v1/gdpr/...``: retention and data subject requests, admin tokens only.

The destructive calls take the token from the Authorization header only, never from the page's
session cookie, so no other site can make a signed-in browser send them.
"""

from __future__ import annotations

import datetime as dt
import json

from flask import current_app, g, jsonify, request

from addon.core import gdpr, retention
from addon.core import home as home_dir
from addon.core.spool import Spool, spooled
from addon.core.store.subjects import Subject, subject_from

from .api import ApiError, api, db_path, send_spooled
from .auth import bearer


def _require_admin(header_only: bool = False) -> None:
    if not g.principal.is_admin:
        raise ApiError(403, "forbidden", "Only an admin token (`aispendtrack admin create-token`) may do this.")
    if header_only and not bearer(request.headers.get("Authorization")):
        raise ApiError(403, "forbidden", "Send the admin token as `Authorization: Bearer ...`; a page session "
                                         "cannot delete data.")


def _subject(values) -> Subject:
    try:
        return subject_from(values.get("customer"), values.get("key"))
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


def _json_object(fields: tuple[str, ...]) -> dict:
    """The request's JSON object ({} for no body). Anything else, or a field this endpoint does not
    take, is a 400: a typo in a field name must not run a purge with the defaults."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, object_pairs_hook=_once_each)
    except _GivenTwice as exc:  # {"dry_run": true, "dry_run": false} ran a purge: the last one won
        raise ApiError(400, "bad_request", f"The field {str(exc)[:100]!r} is given twice; give each once.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):  # not JSON, or not UTF-8
        raise ApiError(400, "bad_request", f"The body is not JSON; send an object with {' or '.join(fields)}.") \
            from None
    except (ValueError, RecursionError):  # JSON, but a number of thousands of digits, or arrays nested thousands deep
        raise ApiError(400, "bad_request", f"The body is JSON this endpoint cannot read (a number too long, or "
                                           f"nested too deep); send an object with {' or '.join(fields)}.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", f"The body must be a JSON object with {' or '.join(fields)}, "
                                           f"not {type(body).__name__}.")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ApiError(400, "bad_request", f"Unknown field {unknown[0][:100]!r}; this endpoint takes "
                                           f"{' and '.join(fields)}.")
    return body


class _GivenTwice(ValueError):
    pass


def _once_each(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose every field is given once (json.loads keeps the last of two)."""
    found: dict = {}
    for name, value in pairs:
        if name in found:
            raise _GivenTwice(name)
        found[name] = value
    return found


def _spill_dir():
    return current_app.config["AISPENDTRACK_HOME"] / home_dir.SPILL_DIR


@api.get("/gdpr/export")
def gdpr_export():
    _require_admin()
    subject = _subject(request.args)
    # Spooled, so a subject with millions of calls streams in flat memory and never holds the database.
    def write(spool: Spool) -> None:
        with spool.text() as out:
            gdpr.export(db_path(), _spill_dir(), subject, out)

    spool = spooled(current_app.config["AISPENDTRACK_HOME"], write)
    return send_spooled(spool.chunks(), f"aispendtrack-{subject.kind}.json", "application/json")


@api.post("/gdpr/delete")
def gdpr_delete():
    _require_admin(header_only=True)
    body = _json_object(("customer", "key"))
    if "key" in body and type(body["key"]) is not int:  # bool is an int to Python, not to a client
        raise ApiError(400, "bad_request",
                       f"key must be a key id (a JSON number), got {json.dumps(body['key'])[:100]}.")
    subject = _subject(body)
    return jsonify(subject=subject.as_json(), deleted=gdpr.erase(db_path(), _spill_dir(), subject))


@api.post("/purge")
def purge():
    _require_admin(header_only=True)
    body = _json_object(("older_than_days", "dry_run"))
    days, dry_run = body.get("older_than_days"), body.get("dry_run", False)
    if "older_than_days" in body and not (type(days) is int and 1 <= days <= retention.MAX_OLDER_THAN_DAYS):
        raise ApiError(400, "bad_request", f"older_than_days must be a whole number of days from 1 to "
                                           f"{retention.MAX_OLDER_THAN_DAYS}, got {json.dumps(days)[:100]}.")
    if type(dry_run) is not bool:
        raise ApiError(400, "bad_request", f"dry_run must be true or false, got {json.dumps(dry_run)[:100]}.")
    result = retention.purge(db_path(), dt.datetime.now(dt.UTC), dt.timedelta(days=days) if days else None, dry_run)
    return jsonify(dry_run=result.deleted is None, expired_calls=sum(result.expired.values()), deleted=result.deleted)
