"""The report page: sign-in, sign-out, and the page shell (its data comes from /api/v1).

Both forms carry a CSRF token kept in the signed session cookie, and the app refuses a POST
whose ``Origin`` is another site, so no other page can sign a browser in or out.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, redirect, render_template, request, session, url_for

from addon.core import config
from addon.core.store import reading

from .api import current_principal, db_path
from .auth import authenticate, credential, end_session, refusal, same_token, start_session

pages = Blueprint("pages", __name__)


@pages.get("/")
def dashboard():
    principal = current_principal()
    if principal is None:
        return redirect(url_for("pages.login", next=request.full_path))
    refused = refusal(principal, request.method)
    if refused:
        return render_template("sso_error.html", title="No role for you here", message=refused), 403
    with reading(db_path()) as con:
        budget_zone = config.quota_zone(con).key  # named even before there is a budget to carry it
    return render_template("dashboard.html", who=principal.describe(), csrf=_csrf_token(), admin=principal.sees_all,
                           budget_zone=budget_zone)


@pages.get("/login")
def login():
    return render_template("login.html", error=None, csrf=_csrf_token(), sso=current_app.config.get("SSO"))


@pages.post("/login")
def sign_in():
    if not _csrf_ok():
        return render_template("login.html", error=_EXPIRED, csrf=_csrf_token(), sso=current_app.config.get("SSO")), 400
    secret = request.form.get("secret", "").strip()
    found = credential(secret)
    if not found or authenticate(db_path(), *found) is None:
        # 200, not 401: this is the sign-in form shown again with a message, not an API refusal.
        return render_template("login.html", error="That is not an active key or admin token.", csrf=_csrf_token(),
                               sso=current_app.config.get("SSO"))
    session.clear()  # a new session id and a new CSRF token: nothing from before sign-in carries over
    session["sid"] = start_session(db_path(), *found)
    return redirect(own_path(request.args.get("next", "/")))


@pages.post("/logout")
def logout():
    _check_csrf()
    session_id = session.get("sid")
    if isinstance(session_id, str):
        end_session(db_path(), session_id)  # the cookie, even if kept somewhere, is worth nothing now
    session.clear()
    return redirect(url_for("pages.login"))


def own_path(target: str) -> str:
    """``target`` if it is a path on this site, else "/": never a redirect to another host.

    Browsers drop tabs and newlines and read a backslash as a slash, so ``/\\t/evil.example``
    and ``/\\evil.example`` are other hosts to them; anything of the kind is refused."""
    if not target.startswith("/") or "\\" in target or not target.isprintable() or any(c.isspace() for c in target):
        return "/"
    parts = urlsplit(target)
    if target.startswith("//") or parts.scheme or parts.netloc:
        return "/"
    return target


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


_EXPIRED = "The form expired or came from another page; reload the page and try again."


def _csrf_ok() -> bool:
    return same_token(session.get("csrf"), request.form.get("csrf"))


def _check_csrf() -> None:
    if not _csrf_ok():
        abort(400, _EXPIRED)
