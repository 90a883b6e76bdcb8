"""Minimal asyncio HTTP/1.1 pieces for benchmarks: a canned upstream and a keep-alive client.

Both are deliberately tiny so that the proxy, not the harness, is what gets measured.
"""

from __future__ import annotations

import asyncio
import json

CHAT_BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1727346142, "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! " * 20, "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 37, "total_tokens": 51,
              "completion_tokens_details": {"reasoning_tokens": 0}}}).encode()


def _sse_events() -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1727346169,
            "model": "gpt-4o-2024-08-06"}
    events = [{**base, "choices": [{"index": 0, "delta": {"content": f"word{n} "}, "finish_reason": None}]}
              for n in range(20)]
    events.append({**base, "choices": [], "usage": {"prompt_tokens": 79, "completion_tokens": 20,
                                                    "total_tokens": 99}})
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


SSE_EVENTS = _sse_events()

MESSAGE_BODY = json.dumps({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Hello! " * 20}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 14, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
              "output_tokens": 37}}).encode()


def _anthropic_events() -> list[bytes]:
    events = [("message_start", {"type": "message_start", "message": {
        "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 79, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 1}}}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": f"word{n} "}}) for n in range(20)]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": 20}}),
               ("message_stop", {"type": "message_stop"})]
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


ANTHROPIC_EVENTS = _anthropic_events()


def _plain_response(body: bytes = CHAT_BODY) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _stream_response(events: list[bytes] = SSE_EVENTS) -> list[bytes]:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    chunks = [f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in events]
    # Three writes: headers with the first event, the middle, the end, like a real token stream in bursts.
    return [head + chunks[0], b"".join(chunks[1:-1]), chunks[-1] + b"0\r\n\r\n"]


async def serve_upstream(port: int) -> None:
    replies = {(False, False): [_plain_response()], (False, True): _stream_response(),
               (True, False): [_plain_response(MESSAGE_BODY)], (True, True): _stream_response(ANTHROPIC_EVENTS)}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                anthropic = b" /v1/messages" in head[:64]
                stream = b'"stream": true' in body or b'"stream":true' in body
                for piece in replies[anthropic, stream]:
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


class Connection:
    """One keep-alive connection; ``request`` returns (status, seconds to first body byte, body)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, raw: bytes, clock) -> tuple[int, float, bytes]:
        start = clock()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = head.lower()
        if b"transfer-encoding: chunked" in headers:
            body, first = await self._chunked(clock)
        else:
            length = int(headers.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            body = await self.reader.readexactly(length)
            first = clock()
        return status, first - start, body

    async def _chunked(self, clock) -> tuple[bytes, float]:
        parts: list[bytes] = []
        first = None
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            first = first or clock()
            if size == 0:
                return b"".join(parts), first
            parts.append(data[:-2])

    def close(self) -> None:
        self.writer.close()


def request_bytes(port: int, stream: bool, headers: dict[str, str], anthropic: bool = False,
                  ask_usage: bool = True, via_proxy: bool = False) -> bytes:
    """``via_proxy``: to a forward proxy, for the server on ``port`` (an absolute-form request line)."""
    if anthropic:
        path = "/v1/messages"
        body = json.dumps({"model": "claude-sonnet-4-20250514", "max_tokens": 100, "stream": stream,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
    else:
        path = "/v1/chat/completions"
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream,
                           **({"stream_options": {"include_usage": True}} if stream and ask_usage else {})}).encode()
    target = f"http://127.0.0.1:{port}{path}" if via_proxy else path
    # Each provider's own credential header, as its SDK sends it: the proxy refuses to forward a
    # key to another provider's path (an OpenAI bearer token to /v1/messages gets a 404).
    credential = (b"x-api-key: sk-bench\r\nanthropic-version: 2023-06-01" if anthropic
                  else b"authorization: Bearer sk-bench")
    lines = [f"POST {target} HTTP/1.1".encode(), f"host: 127.0.0.1:{port}".encode(),
             b"content-type: application/json", credential, f"content-length: {len(body)}".encode()]
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
