"""Batch APIs: OpenAI's Batch API and Anthropic's Message Batches, billed at the batch rate, once,
to the key, customer and feature of the call that created the batch.

- **Create** (``POST /v1/batches``, ``POST /v1/messages/batches``): the batch id and the call's tags
  are remembered in the store (``batches`` table), so whoever looks at the batch later, the spend
  goes to its creator.
- **Retrieve**: OpenAI's completed batch object names its output file, remembered beside the batch.
  Anthropic's names an absolute ``results_url`` on the provider's host, which the SDK's
  ``results()`` would fetch around the proxy: it is given back as its path alone (the SDKs resolve
  it against their base_url), every other byte as sent (docs/usage.md#batches).
- **Results** (``GET /v1/files/{id}/content``, ``GET /v1/messages/batches/{id}/results``): JSON
  lines, streamed to the client as they arrive (a results file can be gigabytes) and read along
  line by line. Each line's usage is kept in 56 bytes and priced alone on the writer thread (a
  request's long-context tier depends on that request's size, so a sum cannot be priced). A
  complete download adds one row per model: the batch's usage at the batch rate.

Why per line from the results, not the usage total of OpenAI's batch object: that total is a sum
over requests, which the long-context tiers of recent models make unpriceable (see above).

Exactly once: the writer thread claims the batch in the store before it stores its usage rows
(``settle``); a second download, on any replica, finds it claimed and adds nothing. A download cut
short records nothing (a log line says so): the next complete one does.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal

from mitmproxy import http

from pricing import PriceBook
from pricing.usage import TokenUsage

from .core.store import batches as batch_rows
from .decoding import BodyDecoder, DecodeError
from .meter import CallMeter
from .providers import Provider
from .providers.base import loads_document
from .results import FIELDS, ResultsReader

log = logging.getLogger(__name__)

NOTE = "batch_note"  # a row's key (not a column) for what settle() must do before storing it
MAX_OBJECT_BYTES = 8 * 1024 * 1024  # a batch object, or a page of them, as decoded
BATCH_TIER = "batch"
LINK_WAIT_S = 10.0  # how long a download's usage waits for its batch to be known (settle)


def point_results_here(response: http.Response, provider: Provider) -> None:
    """On the event loop, before the client gets a batch object: its results URL made relative."""
    raw = response.raw_content
    if not raw or len(raw) > MAX_OBJECT_BYTES:
        return
    try:
        body = BodyDecoder(response.headers.get("content-encoding", ""), MAX_OBJECT_BYTES).feed(raw)
    except DecodeError:
        return
    rewritten = provider.results_via_proxy(body)
    if rewritten is not None:
        response.content = rewritten  # encoded again as it came; content-length follows


def rows(meter: CallMeter, row: dict, book: PriceBook) -> list[dict]:
    """On the writer thread: a batch call's own row, noting what the store must remember, and for a
    complete results download one row per model with the batch's usage."""
    try:
        return _rows(meter, row, book)
    except Exception:  # the call's own row is kept whatever happens
        log.exception("could not read the batch of call %s; storing the call alone", meter.id)
        return [row]


def _rows(meter: CallMeter, row: dict, book: PriceBook) -> list[dict]:
    batch = meter.batch
    if batch is None or meter.status != 200:
        return [row]
    if batch.action == "results":
        return [row, *_usage_rows(meter, row, book)]
    batch_id, results_ref = _ids(meter)
    if batch_id is not None and batch.action == "create":
        row[NOTE] = {"created": batch_id}
    elif batch_id is not None and results_ref is not None:
        row[NOTE] = {"batch": batch_id, "results": results_ref}
    return [row]


def _ids(meter: CallMeter) -> tuple[str | None, str | None]:
    if not meter.body:
        return None, None
    try:
        body = BodyDecoder(meter.content_encoding, MAX_OBJECT_BYTES).feed(meter.body)
    except DecodeError:
        return None, None
    parsed = loads_document(body)
    return meter.provider.batch_object(parsed) if isinstance(parsed, dict) else (None, None)


def _usage_rows(meter: CallMeter, row: dict, book: PriceBook) -> list[dict]:
    reader, batch = meter.results, meter.batch
    assert batch is not None
    if reader is None:
        return []
    if reader.malformed:
        log.warning("results of batch %s: %d of %d lines unreadable (the first is line %d), not counted; "
                    "the client got them unchanged", batch.ref, reader.malformed, reader.lines, reader.first_malformed)
    if not reader.usage:
        return []
    if not reader.complete or meter.outcome != "completed" or meter.read_failure:
        log.warning("the download of the results of batch %s ended early (%s) after %d lines: nothing recorded; "
                    "the next complete download records the batch", batch.ref,
                    meter.read_failure or meter.error or "incomplete", reader.lines)
        return []
    error = f"{reader.malformed} result lines unreadable, not counted" if reader.malformed else None
    out = []
    for model, ts, columns in _priced(reader, book, meter.provider.name, row["ts"]):
        out.append({**row, **columns, "id": uuid.uuid4(), "ts": ts, "endpoint": meter.provider.batch_endpoint,
                    "model": model,
                    "stream": False, "usage_source": "reported", "service_tier": BATCH_TIER, "error": error,
                    "latency_ms": None, "ttft_ms": None, "proxy_us": None,  # not a call of its own
                    NOTE: {"results": batch.ref, "download": str(meter.id)}})
    return out


def _priced(reader: ResultsReader, book: PriceBook, provider: str,
            downloaded: dt.datetime) -> list[tuple[str | None, dt.datetime, dict]]:
    """(model, when, the columns of its row) per model, 15 minutes and region the requests ran in: summed
    counts, and the sum of each line's price at the batch rate then. Dated by the latest of its lines
    (the download's time where a line does not say, or says later: a clock ahead), so the day a
    report or the provider's books put the usage on is the day it ran, not the day it was fetched."""
    step = len(FIELDS)
    out = []
    for (model, bucket, region), counts in reader.usage.items():
        ran = reader.ran.get((model, bucket, region))
        at = downloaded if ran is None else min(dt.datetime.fromtimestamp(ran, dt.UTC), downloaded)
        totals = [sum(counts[i::step]) for i in range(step)]
        cost: Decimal | None = Decimal(0)
        source = snapshot = None
        for start in range(0, len(counts), step):
            price = book.price(TokenUsage(**dict(zip(FIELDS, counts[start:start + step], strict=True))), provider,
                               model, at, BATCH_TIER, region=region)
            source, snapshot = source or price.source, snapshot or price.snapshot
            cost = None if cost is None or price.cost_usd is None else cost + price.cost_usd
        out.append((model, at, {**dict(zip(FIELDS, totals, strict=True)), "cost_usd": cost,
                                "priced": cost is not None, "price_source": source if cost is not None else None,
                                "price_snapshot": snapshot}))
    return out


def settle(con, pending: list[dict], on_recorded: Callable[[dict], None]) -> list[dict]:
    """On the writer thread, before ``pending`` is stored: remember new batches and their results
    files, and give a batch's usage rows the tags of the call that created it, once (the rows of a
    batch recorded already are dropped). Returns the rows to settle at a later cycle: those of a
    batch not known yet (see _settle_one). On a failure the rows not yet settled keep their notes."""
    kept: list[dict] = []
    held: list[dict] = []
    claims: dict[str, object] = {}  # download -> what its claim found
    done = 0
    try:
        for done, row in enumerate(pending):  # noqa: B007 (read in finally)
            note = row.get(NOTE)
            verdict = "store" if note is None else _settle_one(con, row, note, claims, on_recorded)
            if verdict == "hold":
                held.append(row)
                continue
            if verdict == "store":
                kept.append(row)
            row.pop(NOTE, None)
        done = len(pending)
    finally:
        pending[:] = kept + pending[done:]
    return held


def _settle_one(con, row: dict, note: dict, claims: dict[str, object],
                on_recorded: Callable[[dict], None]) -> str:
    """"store", "drop" (recorded already) or "hold" (a batch not known yet: in the shared mode, the
    replica that saw it complete may not have flushed that yet; after LINK_WAIT_S it is taken as a
    batch the proxy never saw, recorded for the call that downloaded it)."""
    tags = (row["key_id"], row["customer_id"], row["feature"])
    if "created" in note:
        batch_rows.remember(con, row["provider"], note["created"], None, tags, row["ts"])
        return "store"
    if "download" not in note:  # a completed batch object names its results file
        batch_rows.remember(con, row["provider"], note["batch"], note["results"], tags, row["ts"])
        return "store"
    download, ref, now = note["download"], note["results"], dt.datetime.now(dt.UTC)
    if claims.get(download, batch_rows.UNKNOWN) is batch_rows.UNKNOWN:
        claims[download] = batch_rows.claim(con, row["provider"], ref, now)
        if claims[download] is batch_rows.UNKNOWN and (now - row["ts"]).total_seconds() >= LINK_WAIT_S:
            claims[download] = batch_rows.adopt(con, row["provider"], ref, tags, now)
        if claims[download] is None:
            log.info("the results of batch %s were recorded already; this download adds nothing", ref)
    creator = claims[download]
    if creator is batch_rows.UNKNOWN:
        return "hold"
    if creator is None:
        return "drop"
    assert isinstance(creator, tuple)
    row["key_id"], row["customer_id"], row["feature"] = creator
    on_recorded(row)
    return "store"
