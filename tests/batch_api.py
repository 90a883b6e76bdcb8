"""A fake of the providers' batch APIs, served by tests/upstream.py's FakeProvider (``provider.batches``).

Strict at the wire, as the real services are: OpenAI's Files API (multipart upload, purpose
``batch``, JSONL lines naming one endpoint) and Batch API (``validating`` -> ``in_progress`` ->
``completed`` over successive retrieves, then the output file, one line per request with its
usage); Anthropic's Message Batches (``in_progress`` -> ``ended`` with an absolute ``results_url``
on its own host, results as JSON lines). Authentication headers are required as the providers do.

Each request's usage is a function of its position, so a test can compute every count and price by
hand. Results are generated line by line as they are sent (``pad``: characters of reply text per
line), so a results file of hundreds of megabytes costs the fake no memory.
"""

from __future__ import annotations

import email.parser
import io
import itertools
import json
import threading
import time
import zlib
from dataclasses import dataclass, field

_ids = itertools.count(1)


def openai_usage(n: int) -> dict:
    """The usage of the n-th request (from 0) of an OpenAI batch."""
    return {"prompt_tokens": 1000 + n, "completion_tokens": 200 + n, "total_tokens": 1200 + 2 * n,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}


def completed_openai_batch(creator, poller, model: str, count: int, endpoint: str = "/v1/chat/completions",
                           body: dict | None = None):
    """An OpenAI batch of ``count`` requests as an application runs one with the official SDK:
    uploaded and created by ``creator`` (an openai.OpenAI), polled by ``poller`` until completed.
    Chat requests, or ``body`` on ``endpoint`` ("/v1/responses": a ``file_search`` tool in its
    ``tools`` makes each answer run one search)."""
    requests = [{"custom_id": f"r{n}", "method": "POST", "url": endpoint,
                 "body": {"model": model, **(body or {"messages": [{"role": "user", "content": f"summarise {n}"}]})}}
                for n in range(count)]
    upload = creator.files.create(file=("in.jsonl", io.BytesIO(b"\n".join(json.dumps(r).encode() for r in requests))),
                                  purpose="batch")
    batch = creator.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")
    while (batch := poller.batches.retrieve(batch.id)).status != "completed":
        time.sleep(0.05)
    return batch


def anthropic_usage(n: int, long_prompt: bool) -> dict:
    """The usage of the n-th request (from 0) of an Anthropic batch; ``long_prompt``: 100,000 input tokens
    each (so that three of them sum past the 200K long-context threshold that no single one crosses)."""
    return {"input_tokens": (100_000 if long_prompt else 500) + n, "output_tokens": 300 + n,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "service_tier": "batch"}


@dataclass
class _Batch:
    id: str
    provider: str
    requests: list[dict]
    created_at: int
    retrieved: int = 0
    output_file_id: str | None = None
    api_key: str = ""  # the provider key that created it: whose the usage is, in the provider's books


@dataclass
class BatchApi:
    pad: int = 0                   # characters of reply text in each result line
    malformed_every: int = 0       # every n-th results line is cut short (not JSON); 0: none
    cut_after_bytes: int = 0       # the results connection drops after this many bytes; 0: never
    polls_until_done: int = 2      # retrieves before the batch is done
    gzip_objects: bool = False     # batch objects gzip-encoded for a client that accepts it
    ran_at: list[int] = field(default_factory=list)  # when each request ran (Unix s); []: at creation
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, _Batch] = field(default_factory=dict)
    results_sent: int = 0          # result files served in full
    last_object: bytes = b""       # the bytes of the last batch object retrieved
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handles(self, method: str, path: str) -> bool:
        return path.startswith(("/v1/files", "/v1/batches", "/v1/messages/batches"))


def answer(api: BatchApi, handler, url: str, body: bytes) -> None:
    path = handler.path.split("?")[0]
    headers = {k.lower(): v for k, v in handler.headers.items()}
    if path.startswith("/v1/messages/batches"):
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if not key or not headers.get("anthropic-version"):
            return _json(handler, 401, {"type": "error", "error": {"type": "authentication_error",
                                                                    "message": "an API key is required"}})
        return _anthropic(api, handler, url, path, body, key)
    if not headers.get("authorization", "").startswith("Bearer "):
        return _openai_error(handler, 401, "No API key")
    return _openai(api, handler, path, headers, body)


# OpenAI ---------------------------------------------------------------------------------------


def _openai(api: BatchApi, handler, path: str, headers: dict, body: bytes) -> None:
    parts = path.strip("/").split("/")  # v1 files|batches [id] [content]
    if handler.command == "POST" and parts == ["v1", "files"]:
        return _upload(api, handler, headers, body)
    if handler.command == "POST" and parts == ["v1", "batches"]:
        return _create_openai(api, handler, body, headers["authorization"].removeprefix("Bearer "))
    if handler.command == "GET" and len(parts) == 3 and parts[1] == "batches" and parts[2] in api.batches:
        return _json(handler, 200, _openai_batch(api, api.batches[parts[2]], poll=True))
    if handler.command == "GET" and len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
        batch = next((b for b in api.batches.values() if b.output_file_id == parts[2]), None)
        if batch is not None:
            return _results(api, handler, batch, "application/octet-stream")
    return _openai_error(handler, 404, f"No such object: {path}")


def _upload(api: BatchApi, handler, headers: dict, body: bytes) -> None:
    if not headers.get("content-type", "").startswith("multipart/form-data"):
        return _openai_error(handler, 400, "multipart/form-data expected")
    message = email.parser.BytesParser().parsebytes(
        b"content-type: " + headers["content-type"].encode() + b"\r\n\r\n" + body)
    fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
              for part in message.get_payload()}
    if fields.get("purpose") != b"batch" or not fields.get("file"):
        return _openai_error(handler, 400, "purpose must be batch, with a file")
    file_id = f"file-{next(_ids):06d}"
    api.files[file_id] = fields["file"]
    _json(handler, 200, {"id": file_id, "object": "file", "bytes": len(fields["file"]), "created_at": int(time.time()),
                         "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})


def _create_openai(api: BatchApi, handler, body: bytes, api_key: str) -> None:
    request = json.loads(body)
    lines = [json.loads(line) for line in api.files.get(request.get("input_file_id"), b"").splitlines() if line]
    endpoint = request.get("endpoint")
    if not lines or request.get("completion_window") != "24h" or any(line.get("url") != endpoint for line in lines):
        return _openai_error(handler, 400, "invalid batch")
    batch = _Batch(f"batch_{next(_ids):06d}", "openai", lines, int(time.time()), api_key=api_key)
    api.batches[batch.id] = batch
    _json(handler, 200, _openai_batch(api, batch, poll=False) | {"metadata": request.get("metadata")})


def _openai_batch(api: BatchApi, batch: _Batch, poll: bool) -> dict:
    with api.lock:
        batch.retrieved += poll
        done = batch.retrieved >= api.polls_until_done
        if done and batch.output_file_id is None:
            batch.output_file_id = f"file-{next(_ids):06d}"
    n = len(batch.requests)
    obj = {"id": batch.id, "object": "batch", "endpoint": batch.requests[0]["url"], "errors": None,
           "input_file_id": "file-in", "completion_window": "24h",
           "status": "completed" if done else ("in_progress" if poll else "validating"),
           "output_file_id": batch.output_file_id if done else None, "error_file_id": None,
           "created_at": batch.created_at, "in_progress_at": batch.created_at, "expires_at": batch.created_at + 86400,
           "finalizing_at": None, "completed_at": int(time.time()) if done else None, "failed_at": None,
           "expired_at": None, "cancelling_at": None, "cancelled_at": None,
           "request_counts": {"total": n, "completed": n if done else 0, "failed": 0}, "metadata": None,
           "model": None, "usage": None}
    if done:  # the batch's own totals: never both these and the output file's lines
        usages = [openai_usage(i) for i in range(n)]
        obj["model"] = batch.requests[0]["body"]["model"]
        obj["usage"] = {"input_tokens": sum(u["prompt_tokens"] for u in usages),
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": sum(u["completion_tokens"] for u in usages),
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": sum(u["total_tokens"] for u in usages)}
    return obj


def _openai_line(api: BatchApi, batch: _Batch, n: int) -> dict:
    request = batch.requests[n]
    if request["url"] == "/v1/responses":
        return _responses_line(api, batch, n)
    return {"id": f"batch_req_{n:06d}", "custom_id": request["custom_id"], "error": None,
            "response": {"status_code": 200, "request_id": f"req_{n:06d}", "body": {
                "id": f"chatcmpl-{n}", "object": "chat.completion", "created": _ran(api, batch, n),
                "model": request["body"]["model"] + "-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * api.pad},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": openai_usage(n), "service_tier": "default", "system_fingerprint": "fp_1"}}}


def _ran(api: BatchApi, batch: _Batch, n: int) -> int:
    """When the n-th request ran: an answer's own time (a batch runs for up to 24 hours)."""
    return api.ran_at[n] if n < len(api.ran_at) else batch.created_at


def _responses_line(api: BatchApi, batch: _Batch, n: int) -> dict:
    """A Responses API answer, as the SDK's ``Response`` type has it: a ``file_search_call`` item
    before the message when the request offered the file_search tool."""
    request, usage = batch.requests[n], openai_usage(n)
    searched = any(tool.get("type") == "file_search" for tool in request["body"].get("tools", []))
    output = [{"type": "file_search_call", "id": f"fs_{n}", "status": "completed", "queries": ["q"],
               "results": None}] if searched else []
    output.append({"type": "message", "id": f"msg_{n}", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": "x" * api.pad, "annotations": []}]})
    return {"id": f"batch_req_{n:06d}", "custom_id": request["custom_id"], "error": None,
            "response": {"status_code": 200, "request_id": f"req_{n:06d}", "body": {
                "id": f"resp_{n}", "object": "response", "created_at": _ran(api, batch, n), "status": "completed",
                "model": request["body"]["model"] + "-2025-04-14", "output": output,
                "usage": {"input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": usage["completion_tokens"],
                          "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": usage["total_tokens"]},
                "service_tier": "default"}}}


# Anthropic ------------------------------------------------------------------------------------


def _anthropic(api: BatchApi, handler, url: str, path: str, body: bytes, api_key: str) -> None:
    parts = path.strip("/").split("/")  # v1 messages batches [id] [results]
    if handler.command == "POST" and len(parts) == 3:
        request = json.loads(body)
        requests = request.get("requests")
        if not requests or any(not r.get("custom_id") or "model" not in r.get("params", {}) for r in requests):
            return _json(handler, 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                                    "message": "requests: invalid"}})
        batch = _Batch(f"msgbatch_{next(_ids):06d}", "anthropic", requests, int(time.time()), api_key=api_key)
        api.batches[batch.id] = batch
        return _json(handler, 200, _anthropic_batch(api, batch, url, poll=False))
    batch = api.batches.get(parts[3]) if len(parts) >= 4 else None
    if handler.command == "GET" and batch is not None and len(parts) == 4:
        gzip = api.gzip_objects and "gzip" in handler.headers.get("accept-encoding", "")
        obj = _anthropic_batch(api, batch, url, poll=True)
        # Kept before it is sent: the client may read last_object the moment its answer arrives.
        api.last_object = json.dumps(obj).encode()
        _json(handler, 200, obj, gzip)
        return None
    if handler.command == "GET" and batch is not None and parts[4:] == ["results"]:
        if batch.retrieved < api.polls_until_done:
            return _json(handler, 404, {"type": "error", "error": {"type": "not_found_error",
                                                                    "message": "results not ready"}})
        return _results(api, handler, batch, "application/binary")
    _json(handler, 404, {"type": "error", "error": {"type": "not_found_error", "message": path}})


def _anthropic_batch(api: BatchApi, batch: _Batch, url: str, poll: bool) -> dict:
    with api.lock:
        batch.retrieved += poll
        ended = batch.retrieved >= api.polls_until_done
    n = len(batch.requests)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(batch.created_at))
    return {"id": batch.id, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
            "request_counts": {"processing": 0 if ended else n, "succeeded": n - 1 if ended else 0,
                               "errored": 1 if ended else 0, "canceled": 0, "expired": 0},
            "ended_at": created if ended else None, "created_at": created, "expires_at": created,
            "archived_at": None, "cancel_initiated_at": None,
            "results_url": f"{url}/v1/messages/batches/{batch.id}/results" if ended else None}


def _anthropic_line(api: BatchApi, batch: _Batch, n: int) -> dict:
    request = batch.requests[n]
    if n == len(batch.requests) - 1:  # the last request failed: not billed
        return {"custom_id": request["custom_id"], "result": {"type": "errored", "error": {
            "type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too large"}}}}
    long_prompt = request["custom_id"].startswith("long-")
    return {"custom_id": request["custom_id"], "result": {"type": "succeeded", "message": {
        "id": f"msg_{n:06d}", "type": "message", "role": "assistant", "model": request["params"]["model"],
        "content": [{"type": "text", "text": "y" * api.pad}], "stop_reason": "end_turn", "stop_sequence": None,
        # Where it ran, when the request named it, as Anthropic's usage says.
        "usage": anthropic_usage(n, long_prompt) | ({"inference_geo": geo}
                                                    if (geo := request["params"].get("inference_geo")) else {})}}}


# Results: JSON lines, made as they are sent ---------------------------------------------------------


def _results(api: BatchApi, handler, batch: _Batch, content_type: str) -> None:
    line_of = _openai_line if batch.provider == "openai" else _anthropic_line
    handler.send_response(200)
    handler.send_header("content-type", content_type)
    handler.send_header("transfer-encoding", "chunked")
    handler.end_headers()
    sent = 0
    try:
        for n in range(len(batch.requests)):
            line = json.dumps(line_of(api, batch, n)).encode() + b"\n"
            if api.malformed_every and n % api.malformed_every == api.malformed_every - 1:
                line = line[: len(line) // 2] + b"\n"  # cut short: not JSON
            handler.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            sent += len(line)
            if api.cut_after_bytes and sent >= api.cut_after_bytes:
                handler.wfile.flush()
                handler.connection.shutdown(2)
                handler.close_connection = True
                return
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
        api.results_sent += 1
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True


def _openai_error(handler, status: int, message: str) -> None:
    _json(handler, status, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                      "code": None}})


def _json(handler, status: int, obj: dict, gzip: bool = False) -> bytes:
    """Sends ``obj``; returns its JSON bytes (before any content-encoding)."""
    data = json.dumps(obj).encode()
    sent = zlib.compress(data, wbits=31) if gzip else data
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    if gzip:
        handler.send_header("content-encoding", "gzip")
    handler.send_header("content-length", str(len(sent)))
    handler.end_headers()
    handler.wfile.write(sent)
    return data
