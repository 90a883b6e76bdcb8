"""Who is asking, and what they may see and change: the one place access is decided.

An ``ask_`` key sees its own calls only; an admin token everything. A page user signed in through
single sign-on (web/sso.py) has the role its groups gave it at sign-in: ``admin`` (everything),
``viewer`` (all spend, no changes), ``team`` (its teams' calls and budgets only, no changes), or
none (nothing at all), as far as the sso.toml the app runs with still gives it (``_as_configured``).
``Principal.scope`` limits every report, page of calls and export;
``refusal`` refuses what a principal may not do before any route runs.

The API takes ``Authorization: Bearer <secret>``; the page signs in once and keeps a session
cookie (signed, HttpOnly, SameSite=Strict, Secure over TLS, also behind a trusted TLS proxy) that
holds a random session id. The session lives in the database: it expires after SESSION_LIFETIME
and a sign-out ends it, so a copied cookie is worth nothing afterwards. Every request checks the
key or token behind the session again, so a revoked key loses its sessions too.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from addon.core import home as home_dir
from addon.core import keys as keygen
from addon.core.reports import Selection
from addon.core.store import admin as admin_rows
from addon.core.store import keys as key_rows
from addon.core.store import reading, sso_users, writing
from addon.core.store import sessions as session_rows
from addon.core.wording import visible

from .sso_settings import SsoSettings

SESSION_LIFETIME = dt.timedelta(hours=12)

SECRET_FILE = "web-secret"
MAX_ACTOR = 600  # characters of a single sign-on user as the audit trail names them


ADMIN, VIEWER, TEAM, KEY = "admin", "viewer", "team", "key"
ROLES = (ADMIN, VIEWER, TEAM)  # the roles single sign-on gives (a key's role is its own)
READS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Principal:
    key_id: int | None  # a key's id (its calls only); None for everyone else
    admin_id: int | None = None  # the admin token's id (the audit trail's "who")
    role: str | None = None  # admin | viewer | team | key; None: a signed-in user with no role
    teams: tuple[str, ...] = ()  # a `team` role's teams
    sub: str | None = None  # a single sign-on user's subject at the identity provider
    shown_as: str | None = None  # their name, else e-mail, for the page
    email: str | None = None  # their e-mail, for the audit trail
    groups: tuple[str, ...] | None = None  # their groups the settings mapped at sign-in (None: not kept)

    @classmethod
    def admin_token(cls, admin_id: int) -> Principal:
        return cls(None, admin_id, ADMIN)

    @classmethod
    def key(cls, key_id: int) -> Principal:
        return cls(key_id, role=KEY)

    @property
    def actor(self) -> str:
        """Who, in the audit trail: ``admin:ID``, ``key:ID`` or ``sso:SUB (e-mail)``."""
        if self.sub is not None:  # claims as given at sign-in, kept visible (web/sso.py: a CR would rewrite a row)
            who = self.email or self.shown_as
            return visible(f"sso:{self.sub}" + (f" ({who})" if who else ""), MAX_ACTOR)
        return f"admin:{self.admin_id}" if self.is_admin else f"key:{self.key_id}"

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def sees_all(self) -> bool:
        """Every key's and team's spend (admins and viewers)."""
        return self.role in (ADMIN, VIEWER)

    def scope(self, selection: Selection) -> Selection:
        """``selection`` limited to what this principal may see; PermissionError when it names more."""
        if self.sees_all:
            return selection
        if self.role == KEY and self.key_id is not None:
            return selection.for_key(self.key_id)
        if self.role == TEAM:
            return selection.for_teams(self.teams)
        raise PermissionError(NO_ROLE)

    def describe(self) -> str:
        """For the page's header: who is signed in and what they see."""
        if self.sub is not None:
            seen = {ADMIN: "admin: all keys", VIEWER: "viewer: all spend, read-only",
                    TEAM: f"team {', '.join(self.teams)}"}.get(self.role or "", "no role")
            return f"{self.shown_as or self.sub} ({seen})"
        return "admin: all keys" if self.is_admin else f"key {self.key_id}"


NO_ROLE = ("Your sign-in gives you no role here: none of your groups is mapped to one. Ask an administrator "
           "to add you to a group mapped to admin, viewer or team (docs/sso.md).")


def refusal(principal: Principal, method: str) -> str | None:
    """Why ``principal`` may not make this request at all, or None. Changes are an admin's, or a key's
    where a route allows it (the route then decides); a viewer and a team user change nothing."""
    if principal.role is None:
        return NO_ROLE
    if method not in READS and principal.role in (VIEWER, TEAM):
        return (f"Your role ({principal.role}) may look but not change anything: ask an admin "
                "(docs/sso.md, roles).")
    return None


def bearer(authorization: str | None) -> str | None:
    scheme, _, secret = (authorization or "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None


def credential(secret: str) -> tuple[str, str] | None:
    """(kind, hash) for something that looks like a key or an admin token."""
    if secret.startswith(keygen.ADMIN_PREFIX):
        return "admin", keygen.hash_key(secret)
    if secret.startswith(keygen.PREFIX):
        return "key", keygen.hash_key(secret)
    return None


def authenticate(db: Path, kind: str, digest: str) -> Principal | None:
    """The principal for an active credential, or None when it is unknown or revoked."""
    with reading(db) as con:
        return _principal(con, kind, digest)


def _principal(con, kind: str, digest: str) -> Principal | None:
    if kind == "sso":  # the session holds the user's sub: role and teams as of their last sign-in
        user = sso_users.find(con, digest)
        if user is None:
            return None
        return Principal(None, role=user["role"], teams=user["teams"], sub=digest,
                         shown_as=user["name"] or user["email"], email=user["email"], groups=user["groups"])
    if kind == "admin":
        admin_id = admin_rows.active_id(con, digest)
        return Principal.admin_token(admin_id) if admin_id is not None else None
    key_id = key_rows.find_active(con, digest)
    return Principal.key(key_id) if key_id is not None else None


def start_session(db: Path, kind: str, digest: str) -> str:
    """A new session for a credential already authenticated; returns the id for the cookie."""
    session_id = secrets.token_urlsafe(32)
    with writing(db) as con:
        session_rows.start(con, keygen.hash_key(session_id), kind, digest, dt.datetime.now(dt.UTC),
                           SESSION_LIFETIME)
    return session_id


def session_principal(db: Path, session_id: str, sso: SsoSettings | None) -> Principal | None:
    """The session's principal; ``sso``: the page's single sign-on settings now (None: off)."""
    with reading(db) as con:
        found = session_rows.credential(con, keygen.hash_key(session_id), dt.datetime.now(dt.UTC))
        principal = _principal(con, *found) if found else None
    if principal is not None and principal.sub is not None:
        return _as_configured(principal, sso)
    return principal


def _as_configured(principal: Principal, sso: SsoSettings | None) -> Principal | None:
    """A single sign-on user's role as of their sign-in, as far as the settings still give it: with single
    sign-on turned off their sessions are worth nothing, and the role and teams are those their groups
    at sign-in give under the settings now, so a group's mapping taken out takes away what it gave at
    once, even where another group maps to the same role (what changes at the provider shows at their
    next sign-in: docs/sso.md). A user who signed in before the groups were kept: a role or team no
    group maps to any more is gone."""
    if sso is None:
        return None
    if principal.groups is not None:
        role, teams = sso.role_for(list(principal.groups))
        return replace(principal, role=role, teams=teams)
    if principal.role == TEAM:
        teams = tuple(t for t in principal.teams if t in sso.teams.values())
        return replace(principal, role=TEAM if teams else None, teams=teams)
    if principal.role not in sso.roles.values():
        return replace(principal, role=None, teams=())
    return principal


def end_session(db: Path, session_id: str) -> None:
    with writing(db) as con:
        session_rows.end(con, keygen.hash_key(session_id))


def same_token(expected: str | None, given: str | None) -> bool:
    """Whether ``given`` is ``expected``, in constant time. As bytes: compare_digest raises TypeError on a
    str with a non-ASCII character, which anyone can put in a form field or a query string."""
    return (expected is not None and given is not None and expected != ""
            and hmac.compare_digest(expected.encode(), given.encode(errors="replace")))


def session_secret(home: Path) -> str:
    """The key that signs session cookies, made once per data directory and readable only by us."""
    return home_dir.secret(home, SECRET_FILE)
