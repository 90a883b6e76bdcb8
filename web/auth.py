"""Who is asking: an ``ask_`` key (its own calls only) or an admin token (everything).

The API takes ``Authorization: Bearer <secret>``; the page signs in once and keeps a session
cookie (signed, HttpOnly, SameSite) that holds the secret's hash, never the secret. Every
request checks that hash again, so a revoked key loses its sessions too.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from addon import keys as keygen
from addon.store import admin as admin_rows
from addon.store import keys as key_rows
from addon.store import reading

SECRET_FILE = "web-secret"


@dataclass(frozen=True)
class Principal:
    key_id: int | None  # None: an admin, who sees every key's calls

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
        if kind == "admin":
            return Principal(None) if admin_rows.is_active(con, digest) else None
        key_id = key_rows.find_active(con, digest)
        return Principal(key_id) if key_id is not None else None


def session_secret(home: Path) -> str:
    """The key that signs session cookies, made once per data directory and readable only by us."""
    path = home / SECRET_FILE
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()
