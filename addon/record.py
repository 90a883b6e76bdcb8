"""From a finished call's meter to the row we store: usage, where it came from, and its price.

Runs on the writer thread, off the request path: JSON decoding of full bodies, token
estimates and price look-ups all happen here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field, replace
from decimal import Decimal

from addon.core.store.calls import UNIT_NAMES
from pricing import UNPRICED, Price, PriceBook, unknown_fee
from pricing.usage import TokenUsage

from . import multipart
from .decoding import BodyDecoder, DecodeError
from .meter import CallMeter
from .providers import Observed
from .providers.base import FREE, METERED, UNMETERED, WholeText, loads, loads_document

log = logging.getLogger(__name__)
MAX_REQUEST_PARSE_BYTES = 32 * 1024 * 1024
MAX_DECODED_BYTES = 64 * 1024 * 1024  # past this a response body's usage is not read (the client still gets it all)
MAX_BUFFERED_BODY = 8 * 1024 * 1024
_EDGE = 256 * 1024  # head and tail kept of a larger body: model sits near the start, usage at the end
_SLICE = 1024 * 1024
MAX_MODEL_LENGTH = 200  # characters of a model name stored; real ones (ARNs, fine-tunes) stay far below
_MODEL_IN_HEAD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,%d})"' % MAX_MODEL_LENGTH)
_NOTHING_BILLED = Price(Decimal(0), None)


def build_row(meter: CallMeter, book: PriceBook) -> dict:
    """The row for a finished call. Never raises: a bug in parsing or pricing must not lose the call."""
    try:
        return _full_row(meter, book)
    except Exception:
        log.exception("could not read the usage of call %s; storing it without usage", meter.id)
        row = _row(meter, Observed(), None, None, "none", UNPRICED)
        row["error"] = "usage unreadable: internal error"
        return row


def _full_row(meter: CallMeter, book: PriceBook) -> dict:
    ts = _ts(meter)
    observed = _observe(meter)
    request = _RequestBody(meter)
    model = observed.model or meter.provider.path_model(meter.path) or request.model()
    free = _bills_nothing(meter, observed)
    usage, source = _usage(meter, observed, request, model, free)
    if usage is not None and (meter.guarded or meter.provider.guardrail_in_request(
            meter.path, request.json, request.plain_bytes())):
        usage = replace(usage, guardrail_checks=1)
    if usage is not None:
        image = meter.provider.image_options(meter.path, request.json()) if usage.images else None
        price = book.price(usage, meter.provider.name, model, ts, observed.service_tier, image,
                           region=meter.provider.price_region(meter.path, observed))
    else:
        price = _NOTHING_BILLED if free and source == "none" else UNPRICED
        if source == "none" and not free and meter.billing == METERED and observed.invalid_usage is None:
            # The answer's own reason first (a stream that said why), else the path's.
            observed.unknown_usage = observed.unknown_usage or meter.provider.missing_usage(meter.path,
                                                                                            request.json())
    return _row(meter, observed, model, usage, source, price)


# Calls forwarded and cut before any answer: the provider may have run them, so a cost unknown (the
# request's tokens estimated), not $0. (An upstream that could not be reached ran nothing.)
_CUT_UNANSWERED = ("proxy_stopped", "client_disconnected")


def _bills_nothing(meter: CallMeter, observed: Observed) -> bool:
    """A call the provider charges nothing for: a free path (/v1/models, count_tokens, ...: the
    providers' tables in addon/providers/), or refused or failed before any token. Its cost is $0,
    known, not "unpriced"."""
    if meter.billing == FREE:
        return True
    if meter.status is None:
        return meter.outcome not in _CUT_UNANSWERED
    if meter.answered is not None and meter.answered < 400:  # answered, then cut (the client got our 502):
        return False                                          # the provider made the answer, and bills it
    # A refusal the provider says it bills (Azure's content filter) has a reason, and no usage.
    return meter.status >= 400 and observed.usage is None and observed.unknown_usage is None


# A provider's in-stream error is a code ("overloaded_error", "RESOURCE_EXHAUSTED"): anything else
# (an upstream echoing the prompt there) is not stored, as no text of a call's is.
_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


def _error_code(error: str | None) -> str | None:
    if error is None or _CODE.fullmatch(error):
        return error
    return "error (not a code: not stored)"


def _ts(meter: CallMeter) -> dt.datetime:
    return dt.datetime.fromtimestamp(meter.started_at, dt.UTC)


def _stored_model(model: str | None) -> str | None:
    """A name longer than MAX_MODEL_LENGTH (a caller's or upstream's invention: no price has one) is
    stored cut, ending in "…", so rows, reports and metric labels stay small. The upstream got it whole."""
    if model is None or len(model) <= MAX_MODEL_LENGTH:
        return model
    return model[:MAX_MODEL_LENGTH - 1] + "…"


def _row(meter: CallMeter, observed: Observed, model: str | None, usage: TokenUsage | None,
         source: str, price: Price) -> dict:
    usage = usage or TokenUsage()
    finished = meter.finished_at or meter.started_at
    error = meter.error or _error_code(observed.error)
    if error is None and source == "invalid":
        error = f"usage implausible: {observed.invalid_usage}"[:200]
    reads_usage = meter.provider.metered(meter.path) or meter.batch is not None and meter.batch.action == "results"
    if error is None and meter.read_failure and reads_usage:
        error = f"usage unreadable: {meter.read_failure}"
    if error is None and meter.usage_not_requested and meter.stream and source != "reported":
        error = f"usage not requested: {meter.usage_not_requested}"
    if error is None and source == "unmetered":
        error = f"not metered: {meter.provider.name} bills {meter.provider.endpoint(meter.path)[:200]}, " \
                f"AiSpendTrack does not read its usage (docs/coverage.md)"
    if error is None and observed.unknown_usage:
        error = f"usage unknown: {observed.unknown_usage}"[:200]
    if error is None and observed.fee_estimated and usage.has_tools:
        error = f"tool fee estimated: {observed.fee_estimated}"
    if error is None and (fee := unknown_fee(usage)):
        error = f"tool fee unknown: {fee}"
    return {
        "id": meter.id, "ts": _ts(meter), "key_id": meter.key_id, "provider": meter.provider.name,
        "endpoint": meter.provider.endpoint(meter.path), "model": _stored_model(model), "stream": meter.stream,
        "status": meter.status, "outcome": meter.outcome, "error": error,
        "input_tokens": usage.input_tokens, "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens, "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "output_tokens": usage.output_tokens, "reasoning_tokens": usage.reasoning_tokens,
        "web_search_requests": usage.web_search_requests,
        "cost_usd": price.cost_usd, "priced": price.priced, "price_source": price.source,
        "price_snapshot": price.snapshot, "usage_source": source, "customer_id": meter.customer_id,
        "feature": meter.feature,
        "latency_ms": round((finished - meter.started_at) * 1000, 3),
        "ttft_ms": round((meter.first_byte_at - meter.started_at) * 1000, 3)
        if meter.stream and meter.first_byte_at else None,
        "proxy_us": meter.proxy_us,
        "service_tier": observed.service_tier,
        **{name: getattr(usage, name) for name in UNIT_NAMES},
    }


def _usage(meter: CallMeter, observed: Observed, request: _RequestBody,
           model: str | None, free: bool) -> tuple[TokenUsage | None, str]:
    """``free``: the call bills nothing (see _bills_nothing), so there is no usage to find."""
    if observed.invalid_usage is not None:  # only metered paths are parsed
        return None, "invalid"  # never priced, and never replaced by an estimate
    if free:
        return None, "none"
    if meter.billing == UNMETERED:
        return None, "unmetered"  # billed, but by what we do not read: unpriced, never $0
    complete = meter.outcome == "completed" and observed.complete
    if meter.read_failure is not None and meter.outcome == "completed" and not complete:
        # Answered in full, but not readable to us (an encoding we cannot decode, a body past our
        # limits): its usage is unknown, never the estimate of what we read (a prompt alone).
        return None, "none"
    # Read whole, even if something after failed (a stream's last event, Bedrock's headers).
    if complete and observed.usage is not None:
        # Counts as reported, but a tool fee in them is an estimate (a container's time, a free allowance).
        return observed.usage, "estimated" if observed.fee_estimated else "reported"
    if observed.unknown_usage is not None and (meter.status or 0) >= 400:
        return None, "none"  # a refusal billed in amounts nobody reports (Azure's filter): not estimated
    interrupted = not complete or meter.read_failure is not None
    counted = meter.provider.counted(meter.path, request.json(), model)
    if counted is not None:  # billed by the request alone (a speech input's characters), exact
        return counted, "counted"
    parser = meter.parser or (WholeText(observed) if observed.text is not None else None)
    estimate = meter.provider.estimate(meter.path, request.json(), parser, model)
    if estimate is None:
        return None, "none"
    return estimate, "partial" if interrupted else "estimated"


def _observe(meter: CallMeter) -> Observed:
    observed = _observe_body(meter)
    if observed.usage is None and meter.parser is None and meter.response_headers is not None:
        # Counts in a whole answer's headers (Bedrock's) are the provider's own for the call, whatever
        # its body holds (a model's own format, a JSON array, not JSON at all); a cut transfer is
        # still told by the call's outcome.
        observed.take_usage(meter.provider.usage_in_headers, meter.response_headers)
        observed.complete = observed.complete or observed.usage is not None
    if observed.service_tier is None and meter.response_headers is not None:
        observed.service_tier = meter.provider.tier_in_headers(meter.response_headers)
    return observed


def _observe_body(meter: CallMeter) -> Observed:
    if meter.parser is not None:
        return meter.parser.observed
    if not meter.body or not meter.provider.metered(meter.path):
        return Observed()
    try:
        body = _read_body(meter.body, meter.content_encoding)
    except DecodeError as exc:
        meter.read_failure = str(exc)
        return Observed()
    if not body.truncated:
        parsed = loads_document(bytes(body.head))
        if parsed is None and meter.provider.answers_text(meter.path) and meter.status == 200:
            return Observed(complete=True)  # a transcript as text: whole, with no usage in it
        return meter.provider.parse_body(meter.path, parsed) if parsed else Observed()
    return _observe_large(meter, body)


@dataclass
class _BodyBuffer:
    """A JSON body as decoded; beyond MAX_BUFFERED_BODY only its head and tail are kept."""

    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, data: bytes) -> None:
        if not self.truncated:
            self.head += data
            if len(self.head) > MAX_BUFFERED_BODY:
                self.truncated = True
                self.tail = self.head[-_EDGE:]
                del self.head[_EDGE:]
            return
        self.tail += data
        if len(self.tail) > 2 * _EDGE:
            del self.tail[:-_EDGE]


def _read_body(raw: bytes, content_encoding: str) -> _BodyBuffer:
    """Decode in slices, so a huge (or bomb-like) body never sits decoded in memory at once."""
    decoder, body = BodyDecoder(content_encoding, MAX_DECODED_BYTES), _BodyBuffer()
    for start in range(0, len(raw), _SLICE):
        body.add(decoder.feed(raw[start:start + _SLICE]))
    return body


def _observe_large(meter: CallMeter, body: _BodyBuffer) -> Observed:
    """A body too large to keep (e.g. many embeddings): model from its head, usage from its tail."""
    found = _MODEL_IN_HEAD.search(body.head)
    start = body.tail.rfind(b'"usage"')
    usage_json = None
    if start >= 0:
        colon = body.tail.find(b":", start)
        try:
            usage_json, _ = json.JSONDecoder().raw_decode(body.tail[colon + 1:].decode("utf-8").lstrip())
        except (ValueError, UnicodeDecodeError):
            usage_json = None
    partial = {"model": found.group(1).decode() if found else None, "usage": usage_json}
    return meter.provider.parse_body(meter.path, partial)


class _RequestBody:
    """The request's JSON, decoded at most once and only when something needs it."""

    def __init__(self, meter: CallMeter):
        self._meter = meter
        self._parsed: dict | None = None
        self._done = False

    def json(self) -> dict | None:
        if not self._done:
            self._done = True
            raw = self._meter.request_body
            if raw and len(raw) <= MAX_REQUEST_PARSE_BYTES:
                try:
                    raw = BodyDecoder(self._meter.request_encoding, MAX_REQUEST_PARSE_BYTES).feed(raw)
                except DecodeError:
                    raw = None
                if raw and multipart.is_multipart(self._meter.request_type):
                    self._parsed = multipart.read_fields(raw, self._meter.request_type)
                else:
                    self._parsed = loads(raw) if raw else None
        return self._parsed

    def plain_bytes(self) -> bytes | None:
        """The bytes as sent when they are the body itself (not compressed), to search without decoding."""
        return self._meter.request_body if self._meter.request_encoding in ("", "identity") else None

    def model(self) -> str | None:
        model = (self.json() or {}).get("model")
        return model if isinstance(model, str) else None
