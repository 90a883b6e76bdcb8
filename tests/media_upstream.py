"""A fake of the APIs billed in other units than chat tokens, strict at the wire: a real HTTP server
on 127.0.0.1 answering OpenAI's images and audio APIs, Anthropic's legacy Text Completions and
Gemini's OpenAI-compatible API as the providers document them.

Strict as the real services: a multipart upload must parse as multipart/form-data with its file
and ``model`` parts (else a 400 in OpenAI's error shape); a JSON body must be JSON with ``model``.
The durations it reports are those of the WAV file it was sent (read from its header, as the
service decodes the audio), and every request's raw bytes are kept for the tests to compare.
Payload shapes: the openai SDK's types (images_response.py, audio/transcription*.py,
audio/transcription_verbose.py) and docs/coverage.md.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler

from .upstream import LocalServer, Received

# What the fake's models "use", fixed so that the tests can work out the price by hand.
IMAGE_OUTPUT_TOKENS = 4160            # gpt-image-1, 1024x1024 high quality, per image
IMAGE_INPUT_IMAGE_TOKENS = 323        # gpt-image-1, per input image of an edit
TRANSCRIBE_TEXT_TOKENS = 7            # gpt-4o-transcribe: the prompt's text
AUDIO_TOKENS_PER_SECOND = 10          # gpt-4o-transcribe: input audio tokens per second of audio
TRANSCRIPT = "the quick brown fox jumps over the lazy dog"
TRANSCRIPT_TOKENS = 9
SPEECH_OUTPUT_TOKENS = 1234           # gpt-4o-mini-tts, speech.audio.done
COMPLETION_TEXT = " Hello! How can I help you today?"


class MediaProvider(LocalServer):
    """``gate``: a speech answer waits on it after its first chunk (a test checks that audio
    reaches the client before the provider has finished sending it)."""

    def __init__(self, speech_bytes: int = 256 * 1024) -> None:
        self.speech = bytes(range(256)) * (speech_bytes // 256)  # "audio": every byte value
        self.gate = threading.Event()
        self.gate.set()
        super().__init__(_handler(self))
        self.received: list[Received] = []
        self.server.provider = self  # type: ignore[attr-defined]

    def __enter__(self) -> MediaProvider:
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        self.gate.set()
        super().__exit__(*exc)

    def last(self) -> Received:
        return self.received[-1]


class BadRequest(Exception):
    pass


def wav(seconds: float, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV file of ``seconds`` of silence."""
    data = b"\0\0" * int(seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


def wav_duration(data: bytes) -> float:
    rate = struct.unpack_from("<I", data, 28)[0]
    size = struct.unpack_from("<I", data, 40)[0]
    return size / rate


def form(body: bytes, content_type: str) -> dict[str, bytes | tuple[str, bytes]]:
    """A multipart/form-data body parsed as a server does: text fields, and files as (filename, bytes)."""
    if not content_type.startswith("multipart/form-data") or "boundary=" not in content_type:
        raise BadRequest(f"Invalid Content-Type header ({content_type}), expected multipart/form-data")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart() or message.defects:
        raise BadRequest("Could not parse multipart form")
    fields: dict[str, bytes | tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        filename = part.get_filename()
        fields[name] = (filename, payload) if filename else payload
    return fields


def _handler(provider: MediaProvider):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            answer(provider, self)

        def do_POST(self) -> None:
            answer(provider, self)

    return Handler


def handles(path: str) -> bool:
    """Whether a request on OpenAI's host is one of this fake's images or audio endpoints."""
    return path.split("?")[0].startswith(("/v1/images/", "/v1/audio/"))


def answer(provider: MediaProvider, handler: BaseHTTPRequestHandler, body: bytes | None = None) -> None:
    """Answer one request on ``handler``: this fake's own server's, or the fake provider's
    (tests/upstream.py ``FakeProvider.media``), as the real APIs share OpenAI's host. ``body``: read already."""
    if body is None:
        body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
    headers = {k.lower(): v for k, v in handler.headers.items()}
    provider.received.append(Received(handler.command, handler.path, headers, body))
    path = handler.path.split("?")[0]
    reply = _Reply(provider, handler)
    try:
        route = _ROUTES.get(path)
        if route is None:
            reply._json(404, {"error": {"message": f"Invalid URL (POST {path})", "type": "invalid_request_error",
                                        "param": None, "code": None}})
            return
        route(reply, body, headers.get("content-type", ""))
    except BadRequest as exc:
        reply._json(400, {"error": {"message": str(exc), "type": "invalid_request_error", "param": None,
                                    "code": None}})


class _Reply:
    """How the routes answer, on whichever server's handler the request came."""

    def __init__(self, provider: MediaProvider, handler: BaseHTTPRequestHandler) -> None:
        self.provider, self.handler = provider, handler
        self.headers, self.path = handler.headers, handler.path

    def _json(self, status: int, document: object) -> None:
        self._send(status, "application/json", json.dumps(document).encode())

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.handler.send_response(status)
        self.handler.send_header("content-type", content_type)
        self.handler.send_header("content-length", str(len(data)))
        self.handler.end_headers()
        self.handler.wfile.write(data)

    def _chunks(self, content_type: str, pieces) -> None:
        self.handler.send_response(200)
        self.handler.send_header("content-type", content_type)
        self.handler.send_header("transfer-encoding", "chunked")
        self.handler.end_headers()
        for n, piece in enumerate(pieces):
            self.handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.handler.wfile.flush()
            if n == 0:
                self.provider.gate.wait(20)
        self.handler.wfile.write(b"0\r\n\r\n")
        self.handler.wfile.flush()


def _json_body(body: bytes) -> dict:
    try:
        request = json.loads(body)
    except ValueError:
        raise BadRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(request, dict) or not isinstance(request.get("model"), str):
        raise BadRequest("you must provide a model parameter")
    return request


def _image_data(model: str, n: int) -> dict:
    if model.startswith("gpt-image"):
        return {"data": [{"b64_json": base64.b64encode(b"\x89PNG fake").decode()} for _ in range(n)],
                "background": "opaque", "output_format": "png", "quality": "high", "size": "1024x1024"}
    return {"data": [{"url": "https://example.invalid/img.png", "revised_prompt": "a cat"} for _ in range(n)]}


def _image_usage(prompt_tokens: int, images_in: int, n: int) -> dict:
    image_tokens = IMAGE_INPUT_IMAGE_TOKENS * images_in
    return {"input_tokens": prompt_tokens + image_tokens, "output_tokens": IMAGE_OUTPUT_TOKENS * n,
            "total_tokens": prompt_tokens + image_tokens + IMAGE_OUTPUT_TOKENS * n,
            "input_tokens_details": {"image_tokens": image_tokens, "text_tokens": prompt_tokens}}


def _prompt_tokens(prompt: str) -> int:
    return len(prompt.split())  # the fake's own tokenizer: one token a word


def _generations(handler, body: bytes, content_type: str) -> None:
    request = _json_body(body)
    if not isinstance(request.get("prompt"), str):
        raise BadRequest("Missing required parameter: 'prompt'.")
    n = int(request.get("n") or 1)
    if request.get("stream") is True:  # GPT Image models only: partial images, then each image completed
        if not request["model"].startswith("gpt-image"):
            raise BadRequest("Streaming is only supported for GPT Image models.")
        picture = base64.b64encode(b"\x89PNG fake").decode()
        shape = {"background": "opaque", "output_format": "png", "quality": "high", "size": "1024x1024",
                 "created_at": 1764763200}
        events = [{"type": "image_generation.partial_image", "b64_json": picture, "partial_image_index": 0, **shape}]
        events += [{"type": "image_generation.completed", "b64_json": picture, **shape,
                    "usage": _image_usage(_prompt_tokens(request["prompt"]), 0, 1)} for _ in range(n)]
        handler._chunks("text/event-stream", [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode()
                                              for e in events])
        return
    answer = {"created": 1764763200, **_image_data(request["model"], n)}
    if request["model"].startswith("gpt-image"):
        answer["usage"] = _image_usage(_prompt_tokens(request["prompt"]), 0, n)
    handler._json(200, answer)


def _edits(handler, body: bytes, content_type: str) -> None:
    fields = form(body, content_type)
    images = [v for k, v in fields.items() if k in ("image", "image[]") and isinstance(v, tuple)]
    if not images or not isinstance(fields.get("prompt"), bytes):
        raise BadRequest("Missing required parameter: 'image' and 'prompt'.")
    model = fields.get("model", b"dall-e-2")
    assert isinstance(model, bytes)
    n = int(fields.get("n", b"1"))  # type: ignore[arg-type]
    answer = {"created": 1764763200, **_image_data(model.decode(), n)}
    if model.startswith(b"gpt-image"):
        answer["usage"] = _image_usage(_prompt_tokens(fields["prompt"].decode()), len(images), n)  # type: ignore[union-attr]
    handler._json(200, answer)


def _transcriptions(handler, body: bytes, content_type: str) -> None:
    fields = form(body, content_type)
    upload, model = fields.get("file"), fields.get("model")
    if not isinstance(upload, tuple) or not isinstance(model, bytes):
        raise BadRequest("Missing required parameters: 'file' and 'model'.")
    if not upload[1].startswith(b"RIFF"):
        seconds = 5.0  # "mp3": the real service decodes it; the fake says five seconds
    else:
        seconds = wav_duration(upload[1])
    response_format = fields.get("response_format", b"json").decode()  # type: ignore[union-attr]
    if response_format in ("text", "srt", "vtt"):
        handler._send(200, "text/plain; charset=utf-8", (TRANSCRIPT + "\n").encode())
        return
    if model == b"whisper-1":
        usage: dict = {"type": "duration", "seconds": round(seconds)}
    else:
        audio = int(seconds * AUDIO_TOKENS_PER_SECOND)
        usage = {"type": "tokens", "input_tokens": audio + TRANSCRIBE_TEXT_TOKENS,
                 "input_token_details": {"text_tokens": TRANSCRIBE_TEXT_TOKENS, "audio_tokens": audio},
                 "output_tokens": TRANSCRIPT_TOKENS, "total_tokens": audio + TRANSCRIBE_TEXT_TOKENS + TRANSCRIPT_TOKENS}
    if fields.get("stream") == b"true":  # gpt-4o transcribe models only
        if model == b"whisper-1":
            raise BadRequest("Streaming is not supported for whisper-1.")
        events = [{"type": "transcript.text.delta", "delta": word + " "} for word in TRANSCRIPT.split()]
        events.append({"type": "transcript.text.done", "text": TRANSCRIPT, "usage": usage})
        handler._chunks("text/event-stream", [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events])
        return
    if response_format == "verbose_json":  # duration, language and segments; whisper-1 only
        handler._json(200, {"task": "transcribe", "language": "english", "duration": seconds, "text": TRANSCRIPT,
                            "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": TRANSCRIPT,
                                          "tokens": [1, 2], "temperature": 0.0, "avg_logprob": -0.2,
                                          "compression_ratio": 1.1, "no_speech_prob": 0.01}],
                            "usage": usage})
        return
    handler._json(200, {"text": TRANSCRIPT, "usage": usage} if model != b"whisper-1" or "translations" not in
                  handler.path else {"text": TRANSCRIPT})


def _speech(handler, body: bytes, content_type: str) -> None:
    request = _json_body(body)
    if not isinstance(request.get("input"), str) or not request.get("voice"):
        raise BadRequest("Missing required parameters: 'input' and 'voice'.")
    audio = handler.provider.speech
    if request.get("stream_format") == "sse":
        if request["model"] in ("tts-1", "tts-1-hd"):
            raise BadRequest("stream_format 'sse' is not supported for tts-1 and tts-1-hd.")
        pieces = [b"data: " + json.dumps({"type": "speech.audio.delta",
                                          "audio": base64.b64encode(audio[i:i + 3000]).decode()}).encode() + b"\n\n"
                  for i in range(0, len(audio), 3000)]
        words = _prompt_tokens(request["input"])
        done = {"type": "speech.audio.done", "usage": {"input_tokens": words, "output_tokens": SPEECH_OUTPUT_TOKENS,
                                                       "total_tokens": words + SPEECH_OUTPUT_TOKENS}}
        handler._chunks("text/event-stream", [*pieces, b"data: " + json.dumps(done).encode() + b"\n\n"])
        return
    handler._chunks("audio/mpeg", [audio[i:i + 16384] for i in range(0, len(audio), 16384)])


def _variations(handler, body: bytes, content_type: str) -> None:
    fields = form(body, content_type)
    if not isinstance(fields.get("image"), tuple):
        raise BadRequest("Missing required parameter: 'image'.")
    handler._json(200, {"created": 1764763200, **_image_data("dall-e-2", int(fields.get("n", b"1")))})  # type: ignore[arg-type]


def _models(handler, body: bytes, content_type: str) -> None:
    handler._json(200, {"object": "list", "data": [{"id": "gpt-image-1", "object": "model", "created": 1,
                                                    "owned_by": "system"}]})


def _complete(handler, body: bytes, content_type: str) -> None:
    request = _json_body(body)
    if not str(request.get("prompt", "")).startswith("\n\nHuman:") or "max_tokens_to_sample" not in request:
        raise BadRequest("prompt must start with \"\\n\\nHuman:\" turn; max_tokens_to_sample: field required")
    if request.get("stream"):
        pieces = []
        for n, word in enumerate(COMPLETION_TEXT.split(" ")[1:]):
            event = {"type": "completion", "completion": " " + word, "stop_reason": None, "model": request["model"]}
            pieces.append(b"event: completion\ndata: " + json.dumps(event).encode() + b"\n\n")
            if n == 0:
                pieces.append(b"event: ping\ndata: {\"type\": \"ping\"}\n\n")
        last = {"type": "completion", "completion": "", "stop_reason": "stop_sequence", "model": request["model"]}
        pieces.append(b"event: completion\ndata: " + json.dumps(last).encode() + b"\n\n")
        handler._chunks("text/event-stream", pieces)
        return
    handler._json(200, {"type": "completion", "id": "compl_01", "completion": COMPLETION_TEXT,
                        "stop_reason": "stop_sequence", "model": request["model"]})


GEMINI_CHAT_USAGE = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}


def _gemini_chat(handler, body: bytes, content_type: str) -> None:
    request = _json_body(body)
    if not handler.headers.get("authorization", "").startswith("Bearer AIza"):
        handler._json(401, [{"error": {"code": 401, "message": "API key not valid.", "status": "UNAUTHENTICATED"}}])
        return
    handler._json(200, {"id": "chatcmpl-g1", "object": "chat.completion", "created": 1764763200,
                        "model": request["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": "Hello."}}],
                        "usage": GEMINI_CHAT_USAGE})


def _gemini_embeddings(handler, body: bytes, content_type: str) -> None:
    request = _json_body(body)
    handler._json(200, {"object": "list", "model": request["model"],
                        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                        "usage": {"prompt_tokens": 800, "total_tokens": 800}})


_ROUTES = {
    "/v1/images/generations": _generations, "/v1/images/edits": _edits, "/v1/images/variations": _variations,
    "/v1/audio/transcriptions": _transcriptions, "/v1/audio/translations": _transcriptions,
    "/v1/audio/speech": _speech, "/v1/models": _models, "/v1/complete": _complete,
    "/v1beta/openai/chat/completions": _gemini_chat, "/v1beta/openai/embeddings": _gemini_embeddings,
}
