"""Content-Encoding decoding that works chunk by chunk and never grows past a limit.

The proxy forwards the encoded bytes untouched; this only gives the parsers readable bytes.
"""

from __future__ import annotations

import zlib

import brotli

try:
    from compression import zstd  # Python 3.14+
except ImportError:
    from backports import zstd  # installed with mitmproxy


class DecodeError(ValueError):
    pass


class BodyDecoder:
    """``feed(encoded) -> decoded``. Raises DecodeError on bad data, an unknown coding, or past ``limit``."""

    def __init__(self, content_encoding: str, limit: int):
        self.limit = limit
        self.produced = 0
        coding = content_encoding.strip().lower()
        if coding in ("", "identity"):
            self._decode = self._identity
        elif coding in ("gzip", "x-gzip", "deflate"):
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
            self._decode = self._inflate
        elif coding == "br":
            self._brotli = brotli.Decompressor()
            self._decode = lambda data: self._brotli.process(data)
        elif coding == "zstd":
            self._zstd = zstd.ZstdDecompressor()
            self._decode = lambda data: self._zstd.decompress(data, max_length=self._room() + 1)
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

    def _room(self) -> int:
        return max(self.limit - self.produced, 0)

    def _identity(self, data: bytes) -> bytes:
        return data

    def _inflate(self, data: bytes) -> bytes:
        # max_length bounds what one feed can expand to, which is what stops a gzip bomb.
        out = self._zlib.decompress(data, self._room() + 1)
        if self._zlib.unconsumed_tail:
            raise DecodeError(f"decoded body exceeds {self.limit} bytes")
        return out
