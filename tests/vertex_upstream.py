"""A fake of Google Vertex AI, strict at the wire: a real HTTP server on 127.0.0.1 answering Gemini's
generateContent, streamGenerateContent (SSE with ``alt=sse``, else one JSON array) and countTokens,
and Anthropic's Claude by rawPredict and streamRawPredict, as Vertex documents them.

Strict as the real service: every call must carry ``Authorization: Bearer`` with the one access
token it was made with (else a 401 in Google's error shape); the path must be
``/v1[beta1]/projects/P/locations/L/publishers/(google|anthropic)/models/M:METHOD`` with a method the
publisher serves (else a 404); a Claude body must hold ``anthropic_version`` (``vertex-2023-10-16``,
or a dated API version) and no ``model`` (Vertex takes it from the URL), its ``stream`` flag
matching the method; a Gemini body must hold ``contents``. Payloads: https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest
and https://docs.claude.com/en/api/claude-on-vertex-ai (usage as in docs/provider-usage.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .upstream import FakeHandler, LocalServer, Received, send_json, serving_context

TOKEN = "ya29.a0AfB_test-access-token-for-the-fake"
PROJECT = "acme-llm-prod"
API_KEY = "AIzaSyExpressModeKeyForTheFake000000000"  # Vertex AI in express mode: a Google API key
_EXPRESS = re.compile(r"/(?:v1|v1beta1)/publishers/google/models/([a-z0-9.-]+):([A-Za-z]+)")
_PATH = re.compile(r"/(?:v1|v1beta1)/projects/([a-z0-9-]+)/locations/([a-z0-9-]+)/publishers/(google|anthropic)/"
                   r"models/([^/:]+):([A-Za-z]+)")
# Vertex's documented "vertex-2023-10-16", or a dated API version (what anthropic 2.16's AnthropicVertex sends).
_ANTHROPIC_VERSION = re.compile(r"vertex-2023-10-16|20[2-9][0-9]-[01][0-9]-[0-3][0-9]")
_METHODS = {"google": ("generateContent", "streamGenerateContent", "countTokens"),
            "anthropic": ("rawPredict", "streamRawPredict")}

# Gemini's usage (a cached prefix, thoughts, a tool-use prompt): the numbers the tests price by hand.
GEMINI_USAGE = {"promptTokenCount": 345, "cachedContentTokenCount": 230, "candidatesTokenCount": 51,
                "thoughtsTokenCount": 19, "toolUsePromptTokenCount": 7, "totalTokenCount": 422,
                "trafficType": "ON_DEMAND"}
# Usage by modality (each list sums to its count; the cached part is in the prompt's): audio and
# generated images have rates of their own, images and video in the prompt the text rate.
GEMINI_AUDIO_USAGE = {"promptTokenCount": 100_345, "cachedContentTokenCount": 30_000, "candidatesTokenCount": 100,
                      "totalTokenCount": 100_445, "trafficType": "ON_DEMAND",
                      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 345},
                                              {"modality": "AUDIO", "tokenCount": 100_000}],
                      "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 30_000}],
                      "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 100}]}
GEMINI_IMAGE_USAGE = {"promptTokenCount": 10, "candidatesTokenCount": 1295, "totalTokenCount": 1305,
                      "trafficType": "ON_DEMAND", "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}],
                      "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 5},
                                                  {"modality": "IMAGE", "tokenCount": 1290}]}
GEMINI_STREAM_USAGE = [  # running totals: the last one counts
    {"promptTokenCount": 12, "candidatesTokenCount": 3, "totalTokenCount": 15},
    {"promptTokenCount": 12, "candidatesTokenCount": 40, "thoughtsTokenCount": 88, "totalTokenCount": 140},
]
CLAUDE_USAGE = {"input_tokens": 21, "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 3400,
                "cache_creation": {"ephemeral_5m_input_tokens": 1200, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 64}
CLAUDE_STREAM_START = {"input_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2048,
                       "output_tokens": 1}
CLAUDE_STREAM_END = {"output_tokens": 117}


class BadCall(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class VertexFake(LocalServer):
    def __init__(self, certs: dict[str, Path] | None = None) -> None:
        """``certs``: serve HTTPS with that leaf (tests/certs.py), as Google's hosts do."""
        super().__init__(_handler(self), serving_context(certs) if certs else None)
        self.received: list[Received] = []

    def __enter__(self) -> VertexFake:
        return super().__enter__()

    def last(self) -> Received:
        return self.received[-1]


def _handler(fake: VertexFake):
    class Handler(FakeHandler):
        def do_POST(self) -> None:
            fake.received.append(received := self.receive())
            body = received.body
            try:
                self._answer(body)
            except BadCall as exc:
                self._send(exc.status, {"error": {"code": exc.status, "message": exc.message,
                                                  "status": _STATUS[exc.status]}})

        def _answer(self, body: bytes) -> None:
            path, _, query = self.path.partition("?")
            express = _EXPRESS.fullmatch(path)
            if express is not None:  # express mode: Gemini models on an API key, no project or location
                if self.headers.get("x-goog-api-key") != API_KEY or "authorization" in self.headers:
                    raise BadCall(401, "API key not valid. Please pass a valid API key.")
                if express.group(2) not in _METHODS["google"]:
                    raise BadCall(404, f"The requested URL {path} was not found on this server.")
                self._gemini(_json_body(body), express.group(1), express.group(2), sse=query == "alt=sse")
                return
            if self.headers.get("authorization") != f"Bearer {TOKEN}":
                raise BadCall(401, "Request had invalid authentication credentials. Expected OAuth 2 access token.")
            found = _PATH.fullmatch(path)
            if found is None or found.group(5) not in _METHODS[found.group(3)] or found.group(1) != PROJECT:
                raise BadCall(404, f"The requested URL {path} was not found on this server.")
            request = _json_body(body)
            _, location, publisher, model, method = found.groups()
            if publisher == "anthropic":
                self._claude(request, model, method)
            else:
                self._gemini(request, model, method, sse=query == "alt=sse")

        def _gemini(self, request: dict, model: str, method: str, sse: bool) -> None:
            if not isinstance(request.get("contents"), list):
                raise BadCall(400, "Invalid JSON payload: contents is required.")
            if method == "countTokens":
                self._send(200, {"totalTokens": 31, "totalBillableCharacters": 96})
                return
            if method == "generateContent":
                heard = any(str(data.get("mimeType", data.get("mime_type", ""))).startswith("audio/")  # both spelt
                            for content in request["contents"] for part in content.get("parts", [])
                            for data in [part.get("inlineData", {})])
                usage = (GEMINI_IMAGE_USAGE if model.endswith("-image") else GEMINI_AUDIO_USAGE if heard
                         else GEMINI_USAGE)
                self._send(200, _gemini_chunk("Hello there!", "STOP", usage, model))
                return
            chunks = [_gemini_chunk("Hel", None, GEMINI_STREAM_USAGE[0], model),
                      _gemini_chunk("lo!", "STOP", GEMINI_STREAM_USAGE[1], model)]
            if sse:
                self._stream([f"data: {json.dumps(c)}\r\n\r\n".encode() for c in chunks])
            else:  # without alt=sse: one JSON array, sent as it is generated
                self._stream([b"[" + json.dumps(chunks[0]).encode(), b",\r\n" + json.dumps(chunks[1]).encode(), b"]"],
                             "application/json; charset=UTF-8")

        def _claude(self, request: dict, model: str, method: str) -> None:
            if model == "count-tokens" and method == "rawPredict":  # Claude's token counting: the model in the body
                if not request.get("model") or not request.get("messages"):
                    raise BadCall(400, "model and messages: Field required")
                self._send(200, {"input_tokens": 14})
                return
            if not _ANTHROPIC_VERSION.fullmatch(str(request.get("anthropic_version"))):
                raise BadCall(400, "anthropic_version: Input should be 'vertex-2023-10-16' or an API version")
            if "model" in request:
                raise BadCall(400, "model: Extra inputs are not permitted")
            if not request.get("messages") or not isinstance(request.get("max_tokens"), int):
                raise BadCall(400, "messages and max_tokens: Field required")
            if bool(request.get("stream")) != (method == "streamRawPredict"):
                raise BadCall(400, f"stream must be {method == 'streamRawPredict'} for {method}")
            named = model.replace("@", "-")  # claude-sonnet-4-5@20250929 answers as claude-sonnet-4-5-20250929
            if method == "rawPredict":
                self._send(200, {"id": "msg_vrtx_01", "type": "message", "role": "assistant", "model": named,
                                 "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn",
                                 "stop_sequence": None, "usage": CLAUDE_USAGE})
                return
            start = {"type": "message_start", "message": {
                "id": "msg_vrtx_02", "type": "message", "role": "assistant", "model": named, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": CLAUDE_STREAM_START}}
            events = [("message_start", start),
                      ("ping", {"type": "ping"}),
                      ("content_block_start", {"type": "content_block_start", "index": 0,
                                               "content_block": {"type": "text", "text": ""}}),
                      ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": "Hello!"}}),
                      ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                      ("message_delta", {"type": "message_delta", "usage": CLAUDE_STREAM_END,
                                         "delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
                      ("message_stop", {"type": "message_stop"})]
            self._stream([f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events])

        def _send(self, status: int, payload: dict) -> None:
            send_json(self, status, payload, content_type="application/json; charset=UTF-8")

        def _stream(self, pieces: list[bytes], content_type: str = "text/event-stream") -> None:
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for piece in pieces:
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND"}


def _gemini_chunk(text: str, finish: str | None, usage: dict, model: str) -> dict:
    candidate: dict = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
            "createTime": "2026-12-03T16:00:00.000000Z", "responseId": "vrtx-resp-1"}


def _json_body(body: bytes) -> dict:
    try:
        return json.loads(body)
    except ValueError:
        raise BadCall(400, "Invalid JSON payload received.") from None
