"""Reading a batch's results (JSON lines) as they stream to the client, line by line, in bounded memory.

Runs on the proxy's event loop for every chunk, like the SSE tap (sse.py): the bytes are never
changed, and none is kept past the end of its line. What stays is each line's usage, in
``len(FIELDS)`` 8-byte counts per line, for the writer thread to price (addon/batches.py).
"""

from __future__ import annotations

from array import array
from dataclasses import fields

from pricing.usage import TokenUsage

from .providers import Provider
from .providers.base import loads

MAX_LINE_BYTES = 64 * 1024 * 1024  # one result line holds one response; none comes near this
# Every count a line's usage may hold, its tools' included (a Responses line's file searches are
# billed on top of its tokens); not audio seconds, which no batch endpoint bills and which are not
# whole numbers.
FIELDS = tuple(f.name for f in fields(TokenUsage) if f.name != "audio_seconds")


class LineTooLong(ValueError):
    """A results line grew past MAX_LINE_BYTES without ending."""


BUCKET_S = 900  # the rollups' 15 minutes: every zone's day starts on one of their edges


class ResultsReader:
    """Feed content-decoded chunks cut anywhere; ``usage`` holds each line's counts, per model, the
    15 minutes its request ran in (None where the line does not say: then the download's time) and
    where it ran when the line says (its price may depend on it: pricing/regions.py).
    A line that is not JSON, or whose usage cannot be believed, is counted in ``malformed``."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        # (model, 15-minute bucket, region) -> the lines' counts, len(FIELDS) per line
        self.usage: dict[tuple[str | None, int | None, str | None], array] = {}
        self.ran: dict[tuple[str | None, int | None, str | None], int] = {}  # the same -> its latest line's run time
        self.lines = 0
        self.malformed = 0
        self.first_malformed: int | None = None  # its line number, for the log
        self.complete = False  # the end of the body was read
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        if b"\n" not in data:
            if data:
                self._parts.append(data)
                self._size += len(data)
                if self._size > MAX_LINE_BYTES:
                    self._parts, self._size = [], 0
                    raise LineTooLong(f"a results line longer than {MAX_LINE_BYTES // (1024 * 1024)} MB")
            return
        self._parts.append(data)
        lines = b"".join(self._parts).split(b"\n")
        tail = lines.pop()
        self._parts, self._size = ([tail], len(tail)) if tail else ([], 0)
        for line in lines:
            self._line(line)

    def close(self) -> None:
        """End of the body: a last line without its newline still counts."""
        tail = b"".join(self._parts)
        self._parts, self._size = [], 0
        self._line(tail)
        self.complete = True

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        self.lines += 1
        parsed = loads(line)
        observed = self.provider.batch_result(parsed) if parsed is not None else None
        if parsed is None or observed is not None and observed.invalid_usage is not None:
            self.malformed += 1
            self.first_malformed = self.first_malformed or self.lines
            return
        if observed is None or observed.usage is None:
            return
        model = observed.model if isinstance(observed.model, str) else None
        ran = observed.ran_at
        group = (model, None if ran is None else ran // BUCKET_S, observed.region)
        counts = self.usage.get(group)
        if counts is None:
            counts = self.usage[group] = array("q")
        if ran is not None:
            self.ran[group] = max(ran, self.ran.get(group, ran))
        counts.extend(getattr(observed.usage, name) for name in FIELDS)
