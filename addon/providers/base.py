"""What every provider module gives the meter: routing, usage parsing, estimates, error bodies.

A provider module subclasses ``Provider`` and ``StreamParser``; nothing outside the provider
module looks at a provider's field names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pricing.usage import ImageOptions, TokenUsage

# Raw SSE payloads kept for an estimate, should the stream never report usage.
MAX_KEPT_DELTA_BYTES = 8 * 1024 * 1024
# No real call comes near these (the largest context windows hold a few million tokens). A count
# past them comes from a buggy or hostile upstream; priced, it would put millions of dollars on
# one row and trip every budget, so the call is recorded as "invalid" instead (docs/security.md).
MAX_TOKENS_PER_CALL = 100_000_000
MAX_REQUESTS_PER_CALL = 100_000


# What a call to a path is, for the bill (Provider.billing).
METERED = "metered"        # its usage is read and priced
UNMETERED = "unmetered"    # the provider bills it, we do not meter it: recorded unpriced, never $0
FREE = "free"              # the provider bills nothing for it: $0
_READS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


class InvalidUsage(ValueError):
    """A usage count that is not a plausible whole number; the text names the field and value."""


@dataclass
class Observed:
    """What a response told us. ``usage`` is None when it carried no usage at all."""

    model: str | None = None
    usage: TokenUsage | None = None
    complete: bool = False      # a stream's terminal event was seen (always True for a full body)
    error: str | None = None    # the provider's error type from an in-stream error event
    invalid_usage: str | None = None  # why the reported usage cannot be believed; sticky once set
    service_tier: str | None = None   # as the provider reported it: "default", "flex", "batch", ...
    unknown_usage: str | None = None  # why a call that billed something has no usage we can price
    text: str | None = None           # a whole response's text, when it reports no usage: for an estimate
    fee_estimated: str | None = None  # why a tool fee in the usage cannot be known exactly from the call
    ran_at: int | None = None         # a batch result line's: when its request ran (Unix seconds)
    region: str | None = None         # where the call ran, as the answer says (Anthropic's inference_geo)

    def take_usage(self, parse: Callable[[object], TokenUsage | None], raw: object) -> None:
        """Set ``usage`` from ``parse(raw)``; an implausible count marks the call invalid instead."""
        if self.invalid_usage is not None:
            return
        try:
            usage = parse(raw)
        except InvalidUsage as exc:
            self.invalid_usage, self.usage = str(exc), None
            return
        if usage is not None:
            self.usage = usage


@dataclass
class StreamParser:
    """Per-call incremental parser. ``feed`` runs on the proxy's event loop, so it must stay cheap:
    JSON-decode only the events that carry usage, and keep other payloads raw for later."""

    observed: Observed = field(default_factory=Observed)
    deltas: list[bytes] = field(default_factory=list)
    _kept: int = 0

    def feed(self, event: str | None, data: bytes) -> None:
        raise NotImplementedError

    def keep_delta(self, data: bytes) -> None:
        if self._kept + len(data) <= MAX_KEPT_DELTA_BYTES:
            self.deltas.append(data)
            self._kept += len(data)

    def output_text(self) -> str:
        """The generated text seen so far (decoded lazily, off the event loop)."""
        raise NotImplementedError


class WholeText(StreamParser):
    """A complete response that reports no usage, seen as a stream that has ended, for ``estimate``."""

    def output_text(self) -> str:
        return self.observed.text or ""


@dataclass(frozen=True)
class BatchCall:
    """A call of a provider's batch API (addon/batches.py). ``action``: "create", "retrieve" (a batch
    object comes back) or "results" (its results, JSON lines); ``ref``: what the path names (the
    batch id, or the results file's id)."""

    action: str
    ref: str | None = None


class Provider:
    name: str = ""              # as recorded, and as genai-prices knows the provider
    prefix: str | None = None   # explicit route, e.g. "/gemini"; removed before forwarding
    default_upstream: str | None = None
    # Paths this provider answers on the shared port without a prefix, e.g. ("/v1/messages",).
    paths: tuple[str, ...] = ()
    # The host names its API answers on: the forward mode (addon/forward.py) intercepts and meters
    # these and tunnels every other host untouched. "*" stands for one or more characters other
    # than ".", e.g. "bedrock-runtime.*.amazonaws.com" or "*-aiplatform.googleapis.com".
    hosts: tuple[str, ...] = ()
    # The provider's bill, path by path (full-match patterns; docs/coverage.md cites the price
    # pages): what it bills per call that we do not meter, and what it bills nothing for. A path
    # in neither is free to read (GET, DELETE) and unmetered otherwise: a call we cannot name
    # is never claimed to cost $0.
    billable: tuple[re.Pattern[str], ...] = ()
    free: tuple[re.Pattern[str], ...] = ()

    def __init__(self, counter=None):
        self.counter = counter  # an estimate.Counter, for calls whose usage must be counted by us

    def host_for(self, path: str) -> str | None:
        """The provider's host for this path when it depends on the path (Vertex: the location's),
        used when no upstream is configured; None when it does not, or the path names no valid one."""
        return None

    def endpoint(self, path: str) -> str:
        """The path as recorded: the same for every call to the same API (no ids in it)."""
        return path

    def metered(self, path: str) -> bool:
        """Whether calls to this path carry billable usage we parse."""
        raise NotImplementedError

    def billing(self, method: str, path: str, upgrade: bool = False) -> str:
        """METERED, UNMETERED or FREE: what a call with this method and path is on the bill. A read
        (GET, HEAD, OPTIONS, DELETE) of a metered path bills nothing (GET /v1/chat/completions lists
        stored completions), but for a WebSocket it opens (``upgrade``: OpenAI's realtime, the
        Responses API's WebSocket mode), billed per response."""
        if self.metered(path) and (method.upper() not in _READS or upgrade):
            return METERED
        if any(p.fullmatch(path) for p in self.billable):
            return UNMETERED
        if method.upper() in _READS or any(p.fullmatch(path) for p in self.free):
            return FREE
        return UNMETERED

    def answers_text(self, path: str) -> bool:
        """Whether a successful answer on this metered path may be other than JSON (a transcript)."""
        return False

    def streams_binary(self, path: str) -> bool:
        """Whether an answer on this path that is neither JSON nor SSE (audio) passes through as it
        arrives: it may be long and is never read, so it is never held whole."""
        return False

    def missing_usage(self, path: str, request: dict | None) -> str | None:
        """Why a successful metered call has no usage we could count (stored with its row), where
        there is more to say than that the response carried none."""
        return None

    def guardrail_in_headers(self, headers) -> bool:
        """Whether the request headers name a guardrail the provider bills apart (Bedrock's
        InvokeModel): read in the request hook, as the request's headers are not kept."""
        return False

    def guardrail_in_request(self, path: str, request: Callable[[], dict | None], raw: bytes | None) -> bool:
        """Whether the request body names such a guardrail (Bedrock's Converse). ``request`` decodes
        it (only a path that may name one is worth that); ``raw``: its bytes when sent uncompressed."""
        return False

    def injects_usage(self, path: str, query: str = "") -> bool:
        """Whether a stream to this path (and query string) may be given stream_options.include_usage
        (see injection.py)."""
        return False

    def price_region(self, path: str, observed: Observed) -> str | None:
        """Where the call ran, for a price that depends on it (pricing/regions.py): as the answer
        says (Anthropic's inference_geo), or as its URL does (Vertex AI's location for Claude)."""
        return observed.region

    def path_model(self, path: str) -> str | None:
        """The model a call's URL names, for the APIs that name it there (Gemini, Vertex AI, Bedrock):
        the row then names it even when the answer is not the provider's (a gateway's HTML page)."""
        return None

    def parse_body(self, path: str, body: object) -> Observed:
        """A complete (non-streamed) JSON body: usually an object, for some APIs an array."""
        raise NotImplementedError

    def stream_parser(self, path: str) -> StreamParser:
        raise NotImplementedError

    def escaped_path(self, path: str) -> str | None:
        """A request path this provider's API writes with an escape the canonical form refuses (an
        encoded '/'), when it is one of its own: metered and forwarded as sent. None otherwise."""
        return None

    def usage_in_headers(self, headers) -> TokenUsage | None:
        """Usage a provider reports in the response headers (Bedrock's token counts), for a complete
        body that carries none; read on the writer thread. Raises InvalidUsage like ``count``."""
        return None

    def tier_in_headers(self, headers) -> str | None:
        """A service tier the provider names in the response headers (Bedrock's InvokeModel)."""
        return None

    def estimate(self, path: str, request: dict | None, parser: StreamParser | None,
                 model: str | None) -> TokenUsage | None:
        """Our own count when the provider reported none; None when we cannot tell."""
        return None

    def counted(self, path: str, request: dict | None, model: str | None) -> TokenUsage | None:
        """Usage the provider bills by a published rule on the request itself (the characters of a
        speech input): exact, counted by us, for a call whose response carries none."""
        return None

    def image_options(self, path: str, request: dict | None) -> ImageOptions | None:
        """The size and quality of the images a request asked for, where a price per image depends on them."""
        return None

    def error_body(self, status: int, message: str, code: str) -> bytes:
        """An error in the shape this provider's SDK parses, so the caller sees ``message``."""
        raise NotImplementedError

    # Batch APIs (addon/batches.py): billed at the batch rate, once, to the call that created the batch.
    batch_endpoint: str | None = None  # the endpoint a batch's usage is recorded under

    def batch_call(self, method: str, path: str) -> BatchCall | None:
        return None

    def batch_object(self, body: dict) -> tuple[str | None, str | None]:
        """(the batch's id, what names its results when a results file has one of its own)."""
        return None, None

    def batch_result(self, line: dict) -> Observed | None:
        """One line of a batch's results: the request's model and usage; None when it bills nothing."""
        return None

    def results_via_proxy(self, body: bytes) -> bytes | None:
        """A batch object whose results URL must point back through the proxy, so rewritten; else None."""
        return None


_TIER_NAME = re.compile(r"[a-z0-9_-]{1,32}")


def patterns(*texts: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(text) for text in texts)


def tier_name(value: object) -> str | None:
    """A reported service tier, lower-cased; None for anything that is not a short plain name."""
    if not isinstance(value, str) or not _TIER_NAME.fullmatch(value.lower()):
        return None
    return value.lower()


_EARLIEST, _LATEST = 1_420_070_400, 4_102_444_800  # 2015-01-01 and 2100-01-01, UTC


def unix_time(value: object) -> int | None:
    """A provider's Unix time in seconds, or None for anything else (a string, a float, 1970)."""
    return value if type(value) is int and _EARLIEST <= value < _LATEST else None


def as_dict(value: object) -> dict:
    """``value`` if it is a JSON object, else an empty one: fields of untrusted payloads."""
    return value if isinstance(value, dict) else {}


def texts_in(value: object) -> list[str]:
    """The text inside a request's string, list of strings, or list of content parts, messages or
    input items (each part's ``text``, each item's ``content`` in turn): what an estimate counts."""
    if isinstance(value, str):
        return [value]
    texts: list[str] = []
    if isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict):
                if isinstance(item.get("text"), str):
                    texts.append(item["text"])
                texts += texts_in(item.get("content"))
    return texts


def loads(data: bytes | str) -> dict | None:
    """JSON object or None: provider payloads are untrusted and may be cut short."""
    value = loads_document(data)
    return value if isinstance(value, dict) else None


def loads_document(data: bytes | str) -> dict | list | None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, (dict, list)) else None


def count(obj: object, *path: str, required: bool = False, limit: int = MAX_TOKENS_PER_CALL) -> int:
    """The whole number at ``obj[path...]``; 0 when absent (or null, unless ``required``).

    Raises InvalidUsage for anything else: a string, a boolean, a fraction, a negative number,
    or more than ``limit``. Integral floats pass, as some providers send 12.0."""
    for key in path[:-1]:
        if not isinstance(obj, dict):
            return 0
        obj = obj.get(key)
    if not isinstance(obj, dict):
        return 0
    value = obj.get(path[-1])
    if value is None:
        if required and path[-1] in obj:
            raise InvalidUsage(f"{'.'.join(path)} is null")
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0 \
            or value > limit or value != int(value):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise InvalidUsage(f"{'.'.join(path)}={shown} is not a whole number from 0 to {limit:,}")
    return int(value)
