"""Files sealed with AES-256-GCM: export spools (a key that lives in memory only) and, when the
store is encrypted, spill files (a key derived from the store's).

Layout: ``MAGIC``, a 16-byte random salt, then records of a flag byte (1 on the last record
only), a 4-byte length and that many bytes of ciphertext with its tag. The file's key is
HKDF-SHA256(secret, salt), so no two files share one; record n's nonce is n and the flag (the
STREAM construction), so a record moved, dropped, changed, or a file cut short, fails to open.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"AISPENDTRACK-SEALED-1\n"
_SALT = 16
_RECORD = struct.Struct(">BI")  # last-record flag, ciphertext length


class Unreadable(ValueError):
    """The file is not sealed with this secret, or was changed or cut short."""


def _aead(secret: bytes, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"aispendtrack sealed file")
    return AESGCM(hkdf.derive(secret))


def _nonce(n: int, last: bool) -> bytes:
    return n.to_bytes(11, "big") + bytes([last])


class SealedWriter:
    """Encrypts each ``write`` into ``out`` as one record (so write in large pieces); ``finish()``
    writes the empty last record."""

    def __init__(self, out: IO[bytes], secret: bytes) -> None:
        salt = os.urandom(_SALT)
        out.write(MAGIC + salt)
        self._out, self._aead = out, _aead(secret, salt)
        self._records = 0

    def write(self, data: bytes) -> int:
        if data:
            self._seal(data, last=False)
        return len(data)

    def finish(self) -> None:
        self._seal(b"", last=True)

    def _seal(self, plain: bytes, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._records, last), plain, None)
        self._out.write(_RECORD.pack(last, len(sealed)))
        self._out.write(sealed)
        self._records += 1


def is_sealed(head: bytes) -> bool:
    return head.startswith(MAGIC)


def unseal(source: IO[bytes], secret: bytes) -> Iterator[bytes]:
    """The plaintext, a record at a time; raises Unreadable before yielding anything wrong."""
    if source.read(len(MAGIC)) != MAGIC:
        raise Unreadable("not a sealed file")
    aead = _aead(secret, source.read(_SALT))
    n = 0
    while True:
        head = source.read(_RECORD.size)
        if len(head) < _RECORD.size:
            raise Unreadable("cut short")
        last, length = _RECORD.unpack(head)
        try:
            plain = aead.decrypt(_nonce(n, last == 1), source.read(length), None)
        except InvalidTag:
            raise Unreadable("wrong key, or changed") from None
        yield plain
        if last:
            return
        n += 1
