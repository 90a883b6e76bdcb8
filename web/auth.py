"""Who is asking: an ``ask_`` key (its own calls only) or an admin token (everything)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from addon import keys as keygen
from addon.store import admin as admin_rows
from addon.store import keys as key_rows
from addon.store import reading


@dataclass(frozen=True)
class Principal:
    key_id: int | None  # None: an admin, who sees every key's calls

    @property
    def is_admin(self) -> bool:
        return self.key_id is None


def authenticate(db: Path, authorization: str | None) -> Principal | None:
    """The principal for an ``Authorization: Bearer ...`` header, or None when it is missing or wrong."""
    scheme, _, secret = (authorization or "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        return None
    digest = keygen.hash_key(secret)
    with reading(db) as con:
        if secret.startswith(keygen.ADMIN_PREFIX):
            return Principal(None) if admin_rows.is_active(con, digest) else None
        if secret.startswith(keygen.PREFIX):
            key_id = key_rows.find_active(con, digest)
            return Principal(key_id) if key_id is not None else None
    return None
