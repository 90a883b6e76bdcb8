"""Token counts of our own, for calls whose provider reported none (tiktoken, offline).

tiktoken normally downloads its encoding files on first use. We seed its cache from the
``bpe-openai`` wheel, which ships the same files (their SHA-256 match what tiktoken expects),
so counting works on an air-gapped host. If neither is available we fall back to
4 characters per token and say so in the log once.

Accuracy: for OpenAI models the text counts are exact (same encoding as the API); the chat
framing (3 tokens per message, 3 to prime the reply) follows OpenAI's published recipe, so a
chat prompt estimate is typically within a few tokens. Tool definitions and images in the
prompt are not counted. For Anthropic (only used for streams cut short) the o200k encoding
is an approximation, usually within ~10-20%.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import logging
import os
import threading
from pathlib import Path

import tiktoken
import tiktoken.model

log = logging.getLogger(__name__)

# tiktoken's download URLs (its cache is keyed by sha1 of these) and expected SHA-256.
_SOURCES = {
    "o200k_base": ("https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
                   "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "cl100k_base": ("https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
                    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
}
DEFAULT_ENCODING = "o200k_base"


class Counter:
    """Counts tokens; loads each encoding once, on first use, from ``cache_dir``."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir
        self._encodings: dict[str, tiktoken.Encoding | None] = {}
        self._lock = threading.Lock()
        self._warned = False

    def load_in_background(self) -> threading.Thread:
        """Load every encoding now, off the request path: loading one takes ~1-2 s, which the first
        estimated call would otherwise wait for on the writer thread (rows are promised within ~2 s)."""
        thread = threading.Thread(target=lambda: [self._encoding(name) for name in _SOURCES],
                                  name="aispendtrack-encodings", daemon=True)
        thread.start()
        return thread

    def count(self, text: str, model: str | None) -> int:
        if not text:
            return 0
        encoding = self._encoding(_encoding_name(model))
        if encoding is None:
            return (len(text) + 3) // 4
        return len(encoding.encode(text, disallowed_special=()))

    def _encoding(self, name: str) -> tiktoken.Encoding | None:
        with self._lock:
            if name not in self._encodings:
                self._encodings[name] = self._load(name)
            return self._encodings[name]

    def _load(self, name: str) -> tiktoken.Encoding | None:
        try:
            _seed_cache(self.cache_dir, name)
            previous = os.environ.get("TIKTOKEN_CACHE_DIR")
            if previous is None:
                os.environ["TIKTOKEN_CACHE_DIR"] = str(self.cache_dir)
            try:
                return tiktoken.get_encoding(name)
            finally:
                if previous is None:
                    os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        except Exception as exc:  # no wheel, no network: estimates degrade, calls do not
            if not self._warned:
                log.warning("tiktoken encoding %s unavailable (%s); estimating 4 characters per token",
                            name, type(exc).__name__)
                self._warned = True
            return None


def _encoding_name(model: str | None) -> str:
    if not model:
        return DEFAULT_ENCODING
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING
    return name if name in _SOURCES else DEFAULT_ENCODING


def _seed_cache(cache_dir: Path, name: str) -> None:
    """Put the bpe-openai copy where tiktoken looks, unless a verified copy is there already."""
    url, expected = _SOURCES[name]
    target = cache_dir / hashlib.sha1(url.encode()).hexdigest()
    if target.exists():
        return
    packaged = importlib.resources.files("bpe_openai") / "data" / f"{name}.tiktoken.gz"
    data = gzip.decompress(packaged.read_bytes())
    if hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"bpe-openai's {name} does not match tiktoken's expected hash")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
