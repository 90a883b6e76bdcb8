"""``/api/v1/purge`` and ``/api/v1/gdpr/...``: retention and data subject requests, admin tokens only.

The destructive calls take the token from the Authorization header only, never from the page's
session cookie, so no other site can make a signed-in browser send them.
"""

from __future__ import annotations

import datetime as dt

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
    subject = _subject(request.get_json(silent=True) or {})
    return jsonify(subject={subject.kind: subject.value}, deleted=gdpr.erase(db_path(), _spill_dir(), subject))


@api.post("/purge")
def purge():
    _require_admin(header_only=True)
    body = request.get_json(silent=True) or {}
    older_than = body.get("older_than_days")
    if older_than is not None and (not isinstance(older_than, int) or older_than < 1):
        raise ApiError(400, "bad_request", f"older_than_days must be a whole number of days >= 1, got {older_than!r}.")
    result = retention.purge(db_path(), dt.datetime.now(dt.UTC),
                             dt.timedelta(days=older_than) if older_than else None, bool(body.get("dry_run")))
    return jsonify(dry_run=result.deleted is None, expired_calls=sum(result.expired.values()), deleted=result.deleted)
