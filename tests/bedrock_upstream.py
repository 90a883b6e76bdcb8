"""A fake of AWS Bedrock Runtime over HTTPS on 127.0.0.1, as strict about SigV4 as AWS is.

Every request's signature is recomputed with botocore's signer from the bytes received (method,
path, the signed headers, the Host header among them, the body) and the test's credentials; a
mismatch gets AWS's 403 ``InvalidSignatureException``. Answers: InvokeModel (Claude's Messages
body, or a Mistral body with usage in the headers only), InvokeModelWithResponseStream (Claude's
stream events in AWS event-stream framing), Converse and ConverseStream, as documented
(docs.aws.amazon.com/bedrock/latest/APIReference); and the OpenAI-compatible Chat Completions API
(``/openai/v1/chat/completions``, gpt-oss models), which takes a Bedrock API key as a bearer token
instead of a signature (``API_KEY``; any other bearer gets a 403).

Guardrails: ``GUARDRAIL`` (version 1) exists, any other identifier gets AWS's 400. Named in Converse's
``guardrailConfig`` or InvokeModel's ``X-Amzn-Bedrock-GuardrailIdentifier`` header, it checks the
prompt: one holding ``BLOCKED_WORD`` is refused by it (Converse's ``guardrail_intervened``, the model
never run: no tokens), and a Converse answer with the trace on reports its text units per policy.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import struct
import zlib
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .upstream import FakeHandler, LocalServer, send_json, serving_context

ACCESS_KEY, SECRET_KEY, REGION = "AKIDFORWARDTEST00001", "forward-test-secret-key", "us-east-1"
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)"
                   r"/aws4_request, SignedHeaders=(?P<signed>[^,]+), Signature=(?P<signature>[0-9a-f]{64})")
_CALL = re.compile(r"/model/([^/]+)/(invoke|invoke-with-response-stream|converse|converse-stream)")

CLAUDE_USAGE = {"input_tokens": 25, "output_tokens": 12, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0}
CONVERSE_USAGE = {"inputTokens": 30, "outputTokens": 12, "totalTokens": 3072, "cacheReadInputTokens": 2000,
                  "cacheWriteInputTokens": 1030}
REQUEST_ID = "f0e1d2c3-0000-4000-8000-000000000001"  # x-amzn-requestid, as every Bedrock answer has one
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1mb3J3YXJkLXRlc3Q="  # a Bedrock API key (they start ABSK)
OPENAI_USAGE = {"prompt_tokens": 84, "completion_tokens": 310, "total_tokens": 394}
GUARDRAIL, BLOCKED_WORD = "gr7kq2example", "forbidden-topic"
GUARDRAIL_UNITS = {"topicPolicyUnits": 1, "contentPolicyUnits": 1, "wordPolicyUnits": 1,
                   "sensitiveInformationPolicyUnits": 0, "sensitiveInformationPolicyFreeUnits": 0,
                   "contextualGroundingPolicyUnits": 0}
MISTRAL_HEADERS = {"x-amzn-bedrock-input-token-count": "17", "x-amzn-bedrock-output-token-count": "9"}


def signature_valid(method: str, path: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether the request is signed with the test's credentials, as AWS checks it."""
    found = _AUTH.fullmatch(headers.get("authorization", ""))
    if found is None or found["key"] != ACCESS_KEY or "x-amz-date" not in headers:
        return False
    signed = found["signed"].split(";")
    if "host" not in signed or any(name not in headers for name in signed):
        return False
    request = AWSRequest(method=method, url=f"https://{headers['host']}{path}", data=body,
                         headers={name: headers[name] for name in signed})
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), found["service"], found["region"])
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return hmac.compare_digest(expected, found["signature"])


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message, CRCs included (botocore checks both)."""
    raw_headers = b"".join(bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
                           for name, value in headers.items())
    prelude = struct.pack(">II", 12 + len(raw_headers) + len(payload) + 4, len(raw_headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _event(kind: str, body: dict) -> bytes:
    return event_message({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                         json.dumps(body).encode())


def _chunk(event: dict) -> bytes:
    return _event("chunk", {"bytes": base64.b64encode(json.dumps(event).encode()).decode(), "p": "abcdefgh"})


def claude_message(model: str) -> dict:
    return {"id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Hello from Bedrock"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": CLAUDE_USAGE}


def claude_stream() -> list[bytes]:
    start = {"type": "message_start", "message": {**claude_message(""), "content": [], "stop_reason": None,
                                                  "usage": {**CLAUDE_USAGE, "output_tokens": 1}}}
    return [_chunk(start),
            _chunk({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            _chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            _chunk({"type": "content_block_stop", "index": 0}),
            _chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 12}}),
            _chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": 25, "outputTokenCount": 12, "invocationLatency": 812, "firstByteLatency": 301}})]


def converse_stream() -> list[bytes]:
    return [_event("messageStart", {"role": "assistant"}),
            _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
            _event("contentBlockStop", {"contentBlockIndex": 0}),
            _event("messageStop", {"stopReason": "end_turn"}),
            _event("metadata", {"usage": CONVERSE_USAGE, "metrics": {"latencyMs": 640}})]


class FakeBedrock(LocalServer):
    def __init__(self, certs: dict[str, Path]) -> None:
        self.rejected = 0
        super().__init__(_handler(self), serving_context(certs))
        self.received: list[tuple[str, str, dict[str, str], bytes]] = []

    def __enter__(self) -> FakeBedrock:
        return super().__enter__()


def _handler(fake: FakeBedrock):
    class Handler(FakeHandler):
        def do_POST(self) -> None:
            received = self.receive()
            body, headers = received.body, received.headers
            fake.received.append((self.command, self.path, headers, body))
            if self.path == "/openai/v1/chat/completions" and headers.get("authorization", "").startswith("Bearer "):
                self._openai_chat(headers["authorization"] == f"Bearer {API_KEY}", json.loads(body or b"{}"))
                return
            if not signature_valid(self.command, self.path, headers, body):
                fake.rejected += 1
                self._json(403, {"message": "The request signature we calculated does not match the signature you "
                                            "provided. Check your AWS Secret Access Key and signing method."},
                           {"x-amzn-ErrorType": "InvalidSignatureException:http://internal.amazon.com/coral/"})
                return
            found = _CALL.fullmatch(self.path)
            if found is None:
                self._json(404, {"message": "Unknown operation"}, {"x-amzn-ErrorType": "UnknownOperationException:"})
                return
            model, operation = found.group(1).replace("%3A", ":"), found.group(2)
            request = json.loads(body or b"{}")
            guardrail = request.get("guardrailConfig") if operation.startswith("converse") else \
                {"guardrailIdentifier": headers.get("x-amzn-bedrock-guardrailidentifier"),
                 "guardrailVersion": headers.get("x-amzn-bedrock-guardrailversion")}
            if guardrail and guardrail.get("guardrailIdentifier"):
                if (guardrail["guardrailIdentifier"], guardrail.get("guardrailVersion")) != (GUARDRAIL, "1"):
                    self._json(400, {"message": "The guardrail identifier or version provided in the request does "
                                                "not exist."}, {"x-amzn-ErrorType": "ValidationException:"})
                    return
                if operation == "converse":
                    self._guarded_converse(BLOCKED_WORD.encode() in body, guardrail.get("trace") == "enabled")
                    return
            if operation == "invoke" and guardrail.get("guardrailIdentifier"):
                self._json(200, {**claude_message(model), "amazon-bedrock-guardrailAction": "NONE"},
                           {"x-amzn-bedrock-input-token-count": "25", "x-amzn-bedrock-output-token-count": "12"})
            elif operation == "invoke" and model.startswith("mistral."):
                self._json(200, {"outputs": [{"text": "Bonjour", "stop_reason": "stop"}]}, MISTRAL_HEADERS)
            elif operation == "invoke":
                self._json(200, claude_message(model), {"x-amzn-bedrock-input-token-count": "25",
                                                        "x-amzn-bedrock-output-token-count": "12"})
            elif operation == "converse":
                self._json(200, {"output": {"message": {"role": "assistant", "content": [{"text": "Hello"}]}},
                                 "stopReason": "end_turn", "usage": CONVERSE_USAGE, "metrics": {"latencyMs": 640}})
            else:
                self._stream(claude_stream() if operation == "invoke-with-response-stream" else converse_stream())

        def _guarded_converse(self, blocked: bool, trace: bool) -> None:
            answer: dict = {"output": {"message": {"role": "assistant", "content": [{"text": "Hello"}]}},
                            "stopReason": "end_turn", "usage": CONVERSE_USAGE, "metrics": {"latencyMs": 640}}
            if blocked:  # the model never ran: no tokens, the guardrail's checks alone billed
                answer.update(output={"message": {"role": "assistant", "content": [
                    {"text": "Sorry, the model cannot answer this question."}]}}, stopReason="guardrail_intervened",
                    usage={"inputTokens": 0, "outputTokens": 0, "totalTokens": 0})
            if trace:
                answer["trace"] = {"guardrail": {"inputAssessment": {GUARDRAIL: {"invocationMetrics": {
                    "guardrailProcessingLatency": 190, "usage": GUARDRAIL_UNITS,
                    "guardrailCoverage": {"textCharacters": {"guarded": 12, "total": 12}}}}}}}
            self._json(200, answer)

        def _openai_chat(self, known: bool, request: dict) -> None:
            if not known:
                self._json(403, {"message": "Authentication failed: invalid API key"},
                           {"x-amzn-ErrorType": "AccessDeniedException:"})
                return
            model = request.get("model")
            answer = {"id": "chatcmpl-bdrk01", "created": 1764763200, "model": model, "service_tier": None,
                      "system_fingerprint": None}
            if not request.get("stream"):
                self._json(200, {**answer, "object": "chat.completion", "usage": OPENAI_USAGE, "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hola"}}]})
                return
            chunk = {**answer, "object": "chat.completion.chunk"}
            chunks = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hola"}}]},
                      {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
            if (request.get("stream_options") or {}).get("include_usage"):
                chunks.append({**chunk, "choices": [], "usage": OPENAI_USAGE})
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for piece in [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]:
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            send_json(self, status, body, {**(headers or {}), "x-amzn-requestid": REQUEST_ID})

        def _stream(self, messages: list[bytes]) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/vnd.amazon.eventstream")
            self.send_header("x-amzn-bedrock-content-type", "application/json")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            wire = b"".join(messages)
            # Cut across message boundaries, as a network does: the proxy must reassemble them.
            for start in range(0, len(wire), 37):
                piece = wire[start:start + 37]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler
