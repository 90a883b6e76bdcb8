"""Who is asking: an ``ask_`` key (its own calls only) or an admin token (everything).

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
from dataclasses import dataclass
from pathlib import Path

from addon.core import home as home_dir
from addon.core import keys as keygen
from addon.core.store import admin as admin_rows
from addon.core.store import keys as key_rows
from addon.core.store import reading, writing
from addon.core.store import sessions as session_rows

SESSION_LIFETIME = dt.timedelta(hours=12)

SECRET_FILE = "web-secret"


@dataclass(frozen=True)
class Principal:
    key_id: int | None  # None: an admin, who sees every key's calls
    admin_id: int | None = None  # the admin token's id (the audit trail's "who")

    @property
    def actor(self) -> str:
        """Who, in the audit trail: ``admin:ID`` or ``key:ID``."""
        return f"admin:{self.admin_id}" if self.is_admin else f"key:{self.key_id}"

    @property
    def is_admin(self) -> bool:
        return self.key_id is None


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
    if kind == "admin":
        admin_id = admin_rows.active_id(con, digest)
        return Principal(None, admin_id) if admin_id is not None else None
    key_id = key_rows.find_active(con, digest)
    return Principal(key_id) if key_id is not None else None


def start_session(db: Path, kind: str, digest: str) -> str:
    """A new session for a credential already authenticated; returns the id for the cookie."""
    session_id = secrets.token_urlsafe(32)
    with writing(db) as con:
        session_rows.start(con, keygen.hash_key(session_id), kind, digest, dt.datetime.now(dt.UTC),
                           SESSION_LIFETIME)
    return session_id


def session_principal(db: Path, session_id: str) -> Principal | None:
    with reading(db) as con:
        found = session_rows.credential(con, keygen.hash_key(session_id), dt.datetime.now(dt.UTC))
        return _principal(con, *found) if found else None


def end_session(db: Path, session_id: str) -> None:
    with writing(db) as con:
        session_rows.end(con, keygen.hash_key(session_id))


def same_token(expected: str | None, given: str | None) -> bool:
    return expected is not None and given is not None and expected != "" and hmac.compare_digest(expected, given)


def session_secret(home: Path) -> str:
    """The key that signs session cookies, made once per data directory and readable only by us."""
    return home_dir.secret(home, SECRET_FILE)
