"""A strict fake of OpenAI's Realtime API on 127.0.0.1: ``GET /v1/realtime?model=...`` upgraded to a
WebSocket that speaks the documented event sequence.

The handshake needs a model in the query and ``Authorization: Bearer sk-...`` (else 400/401, as
OpenAI answers), and records the headers it got. The session starts with ``session.created``;
``session.update`` is answered with ``session.updated`` (with an ``error`` event, the update
not applied, when it names another model); each ``response.create`` with
``response.created``, an audio delta, a transcript delta and ``response.done`` with the usage below.
A ``response.create`` whose ``response.instructions`` is ``"cut"`` stops after the audio delta and
closes the socket (code 1011) before ``response.done``; ``"garbled"`` sends a frame that is not
JSON before the audio delta; ``"long"`` sends LONG_DELTAS audio deltas; ``"huge"`` puts HUGE_TEXT
characters of text in its ``response.done``; ``"hold"`` sends no ``response.done`` at all;
``"overlap"`` starts a second (out-of-band) response before the first is done, finishes the first,
then closes the socket (code 1011). ``input_audio_buffer.commit`` is answered with
``input_audio_buffer.committed`` and, when the session transcribes the user's audio
(``session.audio.input.transcription.model``), ``conversation.item.input_audio_transcription.completed``
with that model's usage (TRANSCRIPTION_USAGE; whisper-1's a duration). Every frame sent is kept
in ``sent`` (per connection), byte for byte.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.sync.server import ServerConnection, serve

# One response's usage, as OpenAI documents it (response.done's response.usage).
USAGE = {
    "total_tokens": 2100, "input_tokens": 1200, "output_tokens": 900,
    "input_token_details": {
        "text_tokens": 200, "audio_tokens": 1000, "image_tokens": 0, "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 128, "audio_tokens": 512, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 100, "audio_tokens": 800},
}
# The input transcription's usage, as OpenAI documents it (the completed event's usage), by the model's kind.
TRANSCRIPTION_USAGE = {"type": "tokens", "input_tokens": 120, "output_tokens": 9, "total_tokens": 129,
                       "input_token_details": {"audio_tokens": 120, "text_tokens": 0}}
TRANSCRIPTION_SECONDS = 2.5  # whisper-1's
AUDIO_DELTA_BYTES = 96_000  # 2 s of 24 kHz pcm16, base64-encoded in the delta
LONG_DELTAS = 400  # a "long" response: 13 minutes of audio, 51 MB of frames
HUGE_TEXT = 5 * 1024 * 1024  # characters of text in a "huge" response.done


@dataclass
class Connection:
    path: str
    headers: dict[str, str]
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)


class RealtimeProvider:
    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self._counter = 0

    def __enter__(self) -> RealtimeProvider:
        self._server = serve(self._session, "127.0.0.1", 0, process_request=self._handshake, compression=None,
                             max_size=None)
        self.url = f"http://127.0.0.1:{self._server.socket.getsockname()[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()

    @staticmethod
    def _handshake(connection: ServerConnection, request):
        url = urlsplit(request.path)
        model = parse_qs(url.query).get("model")
        if url.path != "/v1/realtime":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if not request.headers.get("authorization", "").startswith("Bearer sk-"):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing bearer key\n")
        if not model:
            return connection.respond(HTTPStatus.BAD_REQUEST, "model is required\n")
        return None

    def _session(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        conn = Connection(request.path, {k.lower(): v for k, v in request.headers.raw_items()})
        self.connections.append(conn)
        model = parse_qs(urlsplit(request.path).query)["model"][0]
        session = {"object": "realtime.session", "type": "realtime", "id": "sess_fake1", "model": model,
                   "output_modalities": ["audio"]}
        self._send(ws, conn, {"type": "session.created", "session": session})
        for frame in ws:
            raw = frame.encode() if isinstance(frame, str) else frame
            conn.received.append(raw)
            event = json.loads(raw)
            if event["type"] == "session.update":
                asked = event.get("session") or {}
                if asked.get("model", session["model"]) != session["model"]:
                    # As OpenAI: a session's model cannot change (only the upgrade's ?model= sets it).
                    self._send(ws, conn, {"type": "error", "event_id": "event_err1", "error": {
                        "type": "invalid_request_error", "code": "invalid_value", "param": "session.model",
                        "message": "Cannot update a session's model.", "event_id": event.get("event_id")}})
                    continue
                session.update(asked)
                self._send(ws, conn, {"type": "session.updated", "session": session})
            elif event["type"] == "response.create":
                if not self._respond(ws, conn, (event.get("response") or {}).get("instructions")):
                    return
            elif event["type"] == "input_audio_buffer.commit":
                self._transcribe(ws, conn, session)

    def _transcribe(self, ws: ServerConnection, conn: Connection, session: dict) -> None:
        self._counter += 1
        item = f"item_{self._counter}"
        self._send(ws, conn, {"type": "input_audio_buffer.committed", "event_id": f"event_c{self._counter}",
                              "previous_item_id": None, "item_id": item})
        model = (((session.get("audio") or {}).get("input") or {}).get("transcription") or {}).get("model")
        if model is None:
            return
        usage = {"type": "duration", "seconds": TRANSCRIPTION_SECONDS} if model == "whisper-1" else TRANSCRIPTION_USAGE
        self._send(ws, conn, {"type": "conversation.item.input_audio_transcription.completed",
                              "event_id": f"event_t{self._counter}", "item_id": item, "content_index": 0,
                              "transcript": "Hello.", "usage": usage})

    def _respond(self, ws: ServerConnection, conn: Connection, instructions: str | None) -> bool:
        self._counter += 1
        rid = f"resp_{self._counter}"
        self._send(ws, conn, {"type": "response.created", "response": {"id": rid, "status": "in_progress"}})
        if instructions == "garbled":
            self._send_raw(ws, conn, b'{"type": "response.done", "response": {"usage": ')
        audio = base64.b64encode(bytes(range(256)) * (AUDIO_DELTA_BYTES // 256)).decode()
        for _ in range(LONG_DELTAS if instructions == "long" else 1):
            self._send(ws, conn, {"type": "response.output_audio.delta", "response_id": rid, "delta": audio})
        if instructions == "cut":
            ws.close(1011, "upstream went away")
            return False
        if instructions == "overlap":  # an out-of-band response starts; the first finishes; the socket ends
            self._send(ws, conn, {"type": "response.created",
                                  "response": {"id": f"{rid}_oob", "status": "in_progress"}})
            self._send(ws, conn, {"type": "response.done", "event_id": f"event_{self._counter}", "response": {
                "object": "realtime.response", "id": rid, "status": "completed", "output": [], "usage": USAGE}})
            ws.close(1011, "upstream went away")
            return False
        if instructions == "hold":  # a long answer, still being spoken: response.done is not sent yet
            return True
        self._send(ws, conn, {"type": "response.output_audio_transcript.delta", "response_id": rid,
                              "delta": "Hello there"})
        output = [{"type": "message", "content": [{"type": "output_text", "text": "x" * HUGE_TEXT}]}] \
            if instructions == "huge" else []
        self._send(ws, conn, {"type": "response.done", "event_id": f"event_{self._counter}", "response": {
            "object": "realtime.response", "id": rid, "status": "completed", "output": output, "usage": USAGE}})
        return True

    def _send(self, ws: ServerConnection, conn: Connection, event: dict) -> None:
        self._send_raw(ws, conn, json.dumps(event).encode())

    @staticmethod
    def _send_raw(ws: ServerConnection, conn: Connection, frame: bytes) -> None:
        conn.sent.append(frame)
        ws.send(frame.decode())  # a text frame, as OpenAI sends every event
