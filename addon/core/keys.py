"""AiSpendTrack keys (``ask_...``): made here, stored only as a hash, checked in memory.

A key carries 256 random bits, so a plain SHA-256 is a safe hash (no salt or slow hash
needed: there is nothing to brute-force that is smaller than the key itself).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

PREFIX = "ask_"
ADMIN_PREFIX = "ast_"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def new_admin_token() -> str:
    return ADMIN_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def display_prefix(key: str) -> str:
    return key[:10]


class KeyRing:
    """The active keys, as a snapshot that the store's writer thread replaces every few seconds.

    Replacing the whole dict is atomic in CPython, so the request path reads it without a lock.
    The dict is indexed by the first 16 hex digits of the hash (a selector) and the full hash is
    then compared with ``hmac.compare_digest``, so the secret comparison takes constant time.
    """

    def __init__(self) -> None:
        self._by_selector: dict[str, tuple[str, int]] = {}

    def replace(self, active: dict[str, int]) -> None:
        self._by_selector = {digest[:16]: (digest, key_id) for digest, key_id in active.items()}

    def lookup(self, presented: str | None) -> int | None:
        """The key's id if ``presented`` is an active key, else None."""
        if not presented or not presented.startswith(PREFIX):
            return None
        digest = hash_key(presented)
        entry = self._by_selector.get(digest[:16])
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._by_selector)


def create(db: Path, name: str, plan: str, team: str | None = None) -> tuple[int, str]:
    """Store a new key's hash (in the team named ``team``: LookupError if there is none); returns
    (key id, the key). The key itself is never stored."""
    from . import audit
    from .store import keys as key_rows
    from .store import teams as team_rows
    from .store import writing

    key = new_key()
    with writing(db) as con:
        team_id = None if team is None else team_rows.find(con, team)
        if team is not None and team_id is None:
            raise LookupError(team)
        key_id = key_rows.add(con, name, hash_key(key), display_prefix(key), plan, team_id)
        audit.record(con, "keys.create", f"key:{key_id}", None, {"name": name, "plan": plan, "team": team})
    return key_id, key
