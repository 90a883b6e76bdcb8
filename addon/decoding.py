"""Content-Encoding decoding that works chunk by chunk and never grows past a limit.

The proxy forwards the encoded bytes untouched; this only gives the parsers readable bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import brotli

try:
    from compression import zstd  # Python 3.14+
except ImportError:
    from backports import zstd  # installed with mitmproxy


_SLICE = 4096  # bytes fed at a time to a body of several members


class DecodeError(ValueError):
    pass


class BodyDecoder:
    """``feed(encoded) -> decoded``. Raises DecodeError on bad data, an unknown coding, or past ``limit``.

    A body may be several gzip members or zstd frames one after another (a server that compresses
    each streamed event apart): each is decoded in turn, as clients do; bytes after the last whole
    member that start no other are ignored, as urllib3 ignores them. ``deflate`` is zlib's format or,
    as some servers send it, raw deflate without its header: told apart by the first two bytes."""

    def __init__(self, content_encoding: str, limit: int):
        self.limit = limit
        self.produced = 0
        self._head = b""  # deflate's first bytes, until there are two to tell its format by
        self._done = False  # the last member ended and what followed began none: the rest is ignored
        coding = content_encoding.strip().lower()
        if coding in ("", "identity"):
            self._decode = self._identity
        elif coding in ("gzip", "x-gzip"):
            self._wbits = zlib.MAX_WBITS | 32  # gzip or zlib header, detected
            self._zlib = zlib.decompressobj(self._wbits)
            self._decode = self._inflate
        elif coding == "deflate":
            self._wbits = 0  # decided by the first two bytes (_deflate)
            self._decode = self._deflate
        elif coding == "br":
            self._brotli = brotli.Decompressor()
            self._decode = lambda data: self._brotli.process(data)
        elif coding == "zstd":
            self._zstd = zstd.ZstdDecompressor()
            self._decode = self._unzstd
        else:
            raise DecodeError(f"unsupported content-encoding {content_encoding!r}")

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._decode(data)
        except DecodeError:
            raise
        except Exception as exc:  # zlib.error, brotli.error, zstd.ZstdError all mean "not decodable"
            raise DecodeError(f"cannot decode body: {type(exc).__name__}") from None
        self.produced += len(out)
        if self.produced > self.limit:
            raise DecodeError(f"decoded body exceeds {self.limit} bytes")
        return out

    def _room(self, made: int) -> int:
        """What one more step may produce: past the limit by one byte at most, so that it shows."""
        return max(self.limit - self.produced - made, 0) + 1

    def _identity(self, data: bytes) -> bytes:
        return data

    def _deflate(self, data: bytes) -> bytes:
        if not self._wbits:
            self._head += data
            if len(self._head) < 2:
                return b""
            cmf, flg = self._head[0], self._head[1]
            zlib_header = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
            self._zlib = zlib.decompressobj(self._wbits)
            data, self._head = self._head, b""
        return self._inflate(data)

    def _inflate(self, data: bytes) -> bytes:
        return self._members(data, "_zlib", lambda: zlib.decompressobj(self._wbits), zlib.error)

    def _unzstd(self, data: bytes) -> bytes:
        return self._members(data, "_zstd", zstd.ZstdDecompressor, zstd.ZstdError)

    def _members(self, data: bytes, name: str, new: Callable[[], Any], error: type[Exception]) -> bytes:
        """``data`` through the decoder in ``self.<name>``, a new one (``new``) for each member that
        follows the end of one. Fed a slice at a time once members follow each other: each member's
        leftover input is a copy, so a body of many tiny members would cost its length squared."""
        parts: list[bytes] = []
        made = 0
        rest = memoryview(data)
        whole = True  # still the first member: the input goes in at once
        while rest and not self._done:
            chunk = bytes(rest if whole else rest[:_SLICE])
            decoder = getattr(self, name)
            if decoder.eof:  # the member before ended: these bytes begin the next
                decoder = new()
                setattr(self, name, decoder)
                try:
                    out = decoder.decompress(chunk, max_length=self._room(made))
                except error:
                    self._done = True  # not another member: trailing bytes, ignored
                    break
            else:
                # max_length bounds what one step can expand to, which is what stops a bomb.
                out = decoder.decompress(chunk, max_length=self._room(made))
            parts.append(out)
            made += len(out)
            if getattr(decoder, "unconsumed_tail", b""):
                raise DecodeError(f"decoded body exceeds {self.limit} bytes")
            rest = rest[len(chunk) - len(decoder.unused_data) if decoder.eof else len(chunk):]
            whole = whole and not decoder.eof
        return b"".join(parts)
