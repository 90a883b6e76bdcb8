"""The report page: sign-in, sign-out, and the page shell (its data comes from /api/v1)."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, session, url_for

from .api import current_principal, db_path
from .auth import authenticate, credential

pages = Blueprint("pages", __name__)


@pages.get("/")
def dashboard():
    principal = current_principal()
    if principal is None:
        return redirect(url_for("pages.login", next=request.full_path))
    who = "admin: all keys" if principal.is_admin else f"key {principal.key_id}"
    return render_template("dashboard.html", who=who)


@pages.get("/login")
def login():
    return render_template("login.html", error=None)


@pages.post("/login")
def sign_in():
    secret = request.form.get("secret", "").strip()
    found = credential(secret)
    if not found or authenticate(db_path(), *found) is None:
        # 200, not 401: this is the sign-in form shown again with a message, not an API refusal.
        return render_template("login.html", error="That is not an active key or admin token.")
    session.clear()
    session["credential"] = list(found)  # the hash, never the secret
    target = request.args.get("next", "/")
    return redirect(target if target.startswith("/") and not target.startswith("//") else "/")


@pages.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("pages.login"))
