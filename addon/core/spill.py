"""Spill files: rows the database could not take yet (docs/architecture.md, "Nothing is dropped").

The proxy's writer writes and replays them; GDPR requests read and scrub them. One JSON object a
line; when the store is encrypted, the file is sealed (sealed.py) with a key derived from the
store's, so a spill file is no easier to read than the database it waits for.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from . import sealed
from .store import encryption


class Unreadable(ValueError):
    """A sealed spill file that the configured key does not open; the message says why."""


def write(path: Path, rows: list[dict]) -> None:
    """Write, fsync and close ``path``, readable by this user only (it holds customer ids)."""
    text = "".join(json.dumps(row, default=str) + "\n" for row in rows).encode()
    key = encryption.configured_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        if key is None:
            f.write(text)
        else:
            sealer = sealed.SealedWriter(f, key.encode())
            sealer.write(text)
            sealer.finish()
        f.flush()
        os.fsync(f.fileno())


def _timestamp(text: str) -> datetime.datetime | str:
    """A row's time as write() spelt it (``str`` of an aware datetime), or the text if it is not one
    (the insert reads it then, as before)."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return text
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def read(path: Path) -> tuple[list[dict], int]:
    """The rows, and how many lines could not be read (cut short by a crash in an older version).
    Each row's time is a datetime again, as built: settling a batch's usage and counting it by its
    date need it."""
    with open(path, "rb") as f:
        sealed_file = sealed.is_sealed(f.read(len(sealed.MAGIC)))
        f.seek(0)
        text = _unseal(path, f) if sealed_file else f.read()
    rows, unreadable = [], 0
    for line in text.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("ts"), str):
            row["ts"] = _timestamp(row["ts"])
        rows.append(row)
    return rows, unreadable


def _unseal(path: Path, f) -> bytes:
    key = encryption.configured_key()
    if key is None:
        raise Unreadable(f"{path} is sealed with the store's encryption key: set {encryption.ENV_KEY}.")
    try:
        return b"".join(sealed.unseal(f, key.encode()))
    except sealed.Unreadable as exc:
        raise Unreadable(f"{path} does not open with the key in {encryption.ENV_KEY} ({exc}).") from None
