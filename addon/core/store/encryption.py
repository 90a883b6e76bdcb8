"""Encryption at rest: DuckDB's AES-GCM database encryption, when a key is configured.

The key comes from ``AISPENDTRACK_ENCRYPTION_KEY`` or a file named by
``AISPENDTRACK_ENCRYPTION_KEY_FILE``; it is never stored under the data directory. Every process
that opens the database (proxy, CLI, web) needs the same key.

DuckDB reads encrypted files with its built-in crypto, but writes them securely only with the
httpfs extension loaded (OpenSSL); without it DuckDB refuses, and we never fall back to its
"unsafe" mode. httpfs comes from ``extensions.py`` (DuckDB's own directory, the
``duckdb-extension-httpfs`` package of ``pip install 'aispendtrack[encryption]'``, or ``INSTALL``).
See docs/security.md for the limits and the encrypted-volume alternative.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from . import extensions
from .errors import StoreError

ENV_KEY = "AISPENDTRACK_ENCRYPTION_KEY"
ENV_KEY_FILE = "AISPENDTRACK_ENCRYPTION_KEY_FILE"
MIN_KEY_LENGTH = 16


class EncryptionError(StoreError):
    """Encryption is configured but cannot be used as configured; the message says what to do."""


def configured_key() -> str | None:
    key = os.environ.get(ENV_KEY)
    key_file = os.environ.get(ENV_KEY_FILE)
    if key and key_file:
        raise EncryptionError(f"Set {ENV_KEY} or {ENV_KEY_FILE}, not both.")
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EncryptionError(f"Cannot read the encryption key file {key_file}: {exc.strerror}.") from None
    if key is None:
        return None
    if len(key) < MIN_KEY_LENGTH:
        raise EncryptionError(f"The encryption key must be at least {MIN_KEY_LENGTH} characters; "
                              f"`openssl rand -base64 32` makes a good one.")
    return key


def explain(exc: Exception, path: Path) -> Exception:
    """DuckDB's errors about keys, with what to do; any other error unchanged."""
    text = str(exc)
    if "without a key" in text:
        return EncryptionError(f"{path} is encrypted: set {ENV_KEY} or {ENV_KEY_FILE} to its key.")
    if "Wrong encryption key" in text:
        return EncryptionError(f"The encryption key in {ENV_KEY}/{ENV_KEY_FILE} is not the key of {path}.")
    if "is not encrypted" in text:
        return EncryptionError(f"{path} is not encrypted, but an encryption key is set. Encrypt it with "
                               f"`aispendtrack admin encrypt` (proxy stopped), or unset {ENV_KEY}.")
    return exc


def attach_clause(key: str, read_only: bool) -> str:
    quoted = key.replace("'", "''")
    return f"(ENCRYPTION_KEY '{quoted}'{', READ_ONLY' if read_only else ''})"


def load_secure_crypto(con: duckdb.DuckDBPyConnection) -> None:
    """Load httpfs so DuckDB writes encrypted files with OpenSSL; raise a clear error if we cannot."""
    try:
        extensions.load(con, "httpfs", "Writing an encrypted database")
    except extensions.ExtensionMissing as exc:
        raise EncryptionError(f"{exc} Or leave {ENV_KEY} unset and put the data directory on an "
                              f"encrypted volume.") from None
