"""``/api/v1``: report, calls (keyset pages) and export (streamed). JSON errors say what to fix."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, g, jsonify, request, session

from addon.core import audit, config, price_data
from addon.core import home as home_dir
from addon.core.budgets import Budget, with_spend
from addon.core.reports import ReportError, ReportSpec, Selection, parse_report, parse_selection
from addon.core.serialize import json_row
from addon.core.spool import filled
from addon.core.store import ReadTooLong, StoreBusy, StoreError, reading
from addon.core.store import reconciliations as reconciliation_rows
from addon.core.store import reports as report_rows
from addon.core.store import teams as team_rows

from .auth import TEAM, Principal, authenticate, bearer, credential, refusal, session_principal

T = TypeVar("T")
api = Blueprint("api", __name__, url_prefix="/api/v1")
MAX_PAGE = 1000


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@api.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return jsonify(error={"code": exc.code, "message": exc.message}), exc.status


@api.errorhandler(ReportError)
def _bad_request(exc: ReportError):
    return jsonify(error={"code": "bad_request", "message": str(exc)}), 400


@api.errorhandler(StoreBusy)
def _busy(exc: StoreBusy):
    return jsonify(error={"code": "busy", "message": str(exc)}), 503


@api.errorhandler(StoreError)
def _unavailable(exc: StoreError):
    return jsonify(error={"code": "storage_unavailable", "message": str(exc)}), 503


@api.errorhandler(ReadTooLong)
def _too_long(exc: ReadTooLong):
    return jsonify(error={"code": "too_long", "message": str(exc)}), 503


@api.before_request
def _authenticate() -> None:
    principal = current_principal()
    if principal is None:
        raise ApiError(401, "unauthorized", "Send `Authorization: Bearer ask_...` (your key's calls) or an admin "
                                            "token from `aispendtrack admin create-token` (all calls).")
    refused = refusal(principal, request.method)  # roles (web/auth.py): the one check for every route
    if refused:
        raise ApiError(403, "forbidden", refused)
    g.principal = principal
    audit.acting_as(principal.actor)  # whatever this request changes is recorded as the principal's


@api.teardown_request
def _no_longer_acting(exc: BaseException | None) -> None:
    audit.acting_as(None)  # the thread serves other requests (or, in tests, runs the CLI) next


@api.get("/report")
def report():
    """The groups; with ``limit``, the first that many, and X-Total-Groups says how many there are;
    ``percentiles=false``: without their p50/p95 (null), for sums alone (the page's chart)."""
    limit = _int_arg("limit", 0, 1, 100_000) if "limit" in request.args else None
    percentiles = _bool_arg("percentiles", default=True)
    groups, _ = _run_report(lambda con, spec, exact: report_rows.report(con, spec, False, exact, limit, percentiles))
    response = jsonify([json_row(group) for group in groups])
    response.headers["X-Total-Groups"] = str(groups.total_groups)
    return response


@api.get("/report/total")
def report_total():
    return jsonify(json_row(_run_report(report_rows.total)))


def _run_report(answer: Callable[[Any, ReportSpec, bool], T]) -> T:
    """``answer(con, spec, exact)`` for the request's report arguments, on a read of the store;
    ``exact``: a raw scan instead of the rollups (store/rollups.py), for audits."""
    spec = parse_report(request.args.getlist("by"), **_selection_args())
    spec = dataclasses.replace(spec, selection=_scoped(spec.selection))
    with reading(db_path(), time_limit=READ_TIME_LIMIT) as con:
        _known_team(con, spec.selection)
        return answer(con, spec, _bool_arg("exact"))


@api.get("/budgets")
def budgets():
    """Budgets with today's and this month's spend (in the quota time zone). A key sees the budgets
    that count its own calls alone (on the key, or on a customer or feature of the key) and those
    over all calls (scope ``all``), the latter without their spend: that is other keys' too (as the
    429 of such a budget shows no figures). Never a budget of another key, nor another key's tags."""
    with reading(db_path(), time_limit=READ_TIME_LIMIT) as con:
        rows = with_spend(con, dt.datetime.now(dt.UTC), config.quota_zone(con))
    return jsonify([json_row(b) for b in _visible_budgets(rows, g.principal)])


# The access decisions are plain functions, not in the routes: mutation testing (docs/testing.md)
# does not change decorated functions, and these are the lines it must reach.
def _visible_budgets(rows: list[dict], principal: Principal) -> list[dict]:
    """The budgets ``principal`` may see: all for an admin or a viewer; for a team user, its teams'
    with their spend; for a key, its own with their spend; and those over all calls without it."""
    visible = []
    for row in rows:
        budget = Budget.from_row(row)
        team_own = principal.role == TEAM and budget.scope == "team" and budget.scope_value in principal.teams
        if principal.sees_all or team_own or budget.owned_by(principal.key_id):
            visible.append(row)
        elif row["scope"] == "all":
            visible.append({**row, "spent_today_usd": None, "spent_this_month_usd": None,
                            "unpriced_calls_today": None, "unpriced_calls_this_month": None})
    return visible


def _admin_only(principal: Principal) -> None:
    if not principal.sees_all:
        raise ApiError(403, "forbidden", "The reconciliation covers the whole organisation: use an admin token.")


@api.get("/reconciliation")
def reconciliation():
    """The latest scheduled reconciliation per provider (organisation-wide: admin tokens only)."""
    _admin_only(g.principal)
    with reading(db_path(), time_limit=READ_TIME_LIMIT) as con:
        found = reconciliation_rows.latest(con)
    for item in found:
        item["lines"] = [json_row(line) for line in item["lines"]]
    return jsonify([json_row(item) for item in found])


@api.get("/audit")
def audit_trail():
    """The audit trail (admin tokens only: it names every key and token and what was done to them)."""
    if not g.principal.is_admin:
        raise ApiError(403, "forbidden", "The audit trail covers the whole organisation: use an admin token.")
    with reading(db_path(), time_limit=READ_TIME_LIMIT) as con:
        return jsonify([json_row(row) for row in audit.entries(con, request.args.get("since"), request.args.get("tz"))])


@api.get("/prices")
def prices():
    """The list-price data in use, and its age (price_data.py; admins and viewers only: the source may name an
    internal mirror)."""
    if not g.principal.sees_all:
        raise ApiError(403, "forbidden", "The price data's source is the deployment's: use an admin token.")
    with reading(db_path(), time_limit=READ_TIME_LIMIT) as con:
        return jsonify(json_row(price_data.status(con, dt.datetime.now(dt.UTC))))


@api.get("/calls")
def calls():
    limit = _int_arg("limit", 50, 1, MAX_PAGE)
    selection = _scoped(parse_selection(**_selection_args()))
    after = _decode_cursor(request.args.get("cursor"))
    with reading(db_path(), time_limit=READ_TIME_LIMIT) as con:
        _known_team(con, selection)
        rows = report_rows.calls_page(con, selection, limit, after)
    next_cursor = _encode_cursor(rows[-1]) if len(rows) == limit else None
    return jsonify(calls=[json_row(r) for r in rows], next_cursor=next_cursor)


# A reader shares the database's lock with the proxy's writer: a query that runs longer than this
# is stopped, and every answer is built before the first byte is sent (exports in a temporary
# file), so a slow or stalled client never keeps keys from refreshing or rows from being stored.
READ_TIME_LIMIT = 30.0
EXPORT_TIME_LIMIT = 120.0


@api.get("/export")
def export():
    fmt = request.args.get("format", "csv")
    if fmt not in report_rows.EXPORT_FORMATS:
        raise ApiError(400, "bad_request",
                       f"format must be one of {', '.join(report_rows.EXPORT_FORMATS)}, got {fmt!r}.")
    selection = _scoped(parse_selection(**_selection_args()))
    with reading(db_path(), time_limit=EXPORT_TIME_LIMIT, long_read=True) as con:
        _known_team(con, selection)
        # The same COPY as `aispendtrack export`: one implementation, one file format.
        spool = filled(current_app.config["AISPENDTRACK_HOME"],
                       lambda path: report_rows.copy_out(con, selection, path, fmt))
    return send_spooled(spool.chunks(), f"aispendtrack-calls.{fmt}", report_rows.EXPORT_FORMATS[fmt])


def send_spooled(chunks: Iterator[bytes], filename: str, mimetype: str) -> Response:
    """Stream an answer already written whole (core/spool.py) as a download."""
    return Response(chunks, mimetype=mimetype, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _selection_args() -> dict:
    """The filters the CLI's report, calls and export take, by the same names."""
    args = request.args
    chosen: dict = {name: args.get(name) for name in ("since", "until", "customer", "feature", "model", "key",
                                                       "tz", "provider", "team")}
    if "status" in args:
        chosen["status"] = _int_arg("status", 0, 100, 599)
    chosen["errors"] = _bool_arg("errors")
    return chosen


def _known_team(con, selection: Selection) -> None:
    """A team filter names a team that exists: a misspelt one is a 400, not an empty answer. A key may
    name only its own team, and hears the same for any other name, existing or not: which teams the
    organisation has is not a key's to list."""
    if selection.team is None:
        return
    principal = g.principal
    if principal.role == TEAM:
        return  # Principal.scope refused any team but its own already
    if principal.key_id is not None:
        own = team_rows.of_key(con, principal.key_id)
        if selection.team != own:
            raise ApiError(400, "bad_request", f"team: key {principal.key_id} is not in a team named "
                                               f"{selection.team!r}; its team is {own!r}.")
    elif team_rows.find(con, selection.team) is None:
        raise ApiError(400, "bad_request", f"team: no team named {selection.team!r} (`aispendtrack teams list`).")


def _bool_arg(name: str, default: bool = False) -> bool:
    value = request.args.get(name, str(default)).lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(400, "bad_request", f"{name} must be true or false, got {request.args[name]!r}.")
    return value in ("true", "1")


def _scoped(selection: Selection) -> Selection:
    """What the principal may see (web/auth.py: a key its own calls, a team user its teams'); asking for
    more is a 403, never someone else's numbers."""
    try:
        return g.principal.scope(selection)
    except PermissionError as exc:
        raise ApiError(403, "forbidden", str(exc)) from None


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ApiError(400, "bad_request", f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return number


def _encode_cursor(row: dict) -> str:
    return base64.urlsafe_b64encode(f"{row['ts'].isoformat()}|{row['id']}".encode()).decode()


def _decode_cursor(cursor: str | None) -> tuple[dt.datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        ts, _, call_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        when = dt.datetime.fromisoformat(ts)
        if when.tzinfo is None:  # ours always name the offset; a time without one is a hand-made cursor
            raise ValueError
        return when, uuid.UUID(call_id)
    except ValueError:
        raise ApiError(400, "bad_request", "cursor is not one this API gave out; start again without it.") from None


def current_principal() -> Principal | None:
    """From the Authorization header, else from the page's session cookie."""
    secret = bearer(request.headers.get("Authorization"))
    if secret:
        found = credential(secret)
        return authenticate(db_path(), *found) if found else None
    session_id = session.get("sid")
    if not isinstance(session_id, str):
        return None
    return session_principal(db_path(), session_id, current_app.config.get("SSO"))


def db_path():
    return home_dir.db_path(current_app.config["AISPENDTRACK_HOME"])
