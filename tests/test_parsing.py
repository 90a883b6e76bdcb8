"""The incremental pieces on their own: SSE framing, content decoding, usage normalisation."""

from __future__ import annotations

import gzip
import json
import random
import struct
import time
import zlib

import brotli
import pytest

from addon.decoding import BodyDecoder, DecodeError
from addon.eventstream import EventStreamDecoder, FramingError
from addon.providers import anthropic, openai
from addon.sse import EventTooLarge, SSEDecoder
from pricing.usage import TokenUsage

from . import payloads


def _decode_in_pieces(stream: bytes, cuts: list[int]) -> list[tuple[str | None, bytes]]:
    decoder, events, start = SSEDecoder(), [], 0
    for cut in cuts + [len(stream)]:
        events += decoder.feed(stream[start:cut])
        start = cut
    return events + decoder.close()


@pytest.mark.parametrize("seed", range(20))
def test_sse_events_are_the_same_however_the_bytes_are_cut(seed):
    stream = b"".join(payloads.anthropic_stream(payloads.TOOL_USE_START, {"output_tokens": 65}, payloads.SONNET))
    stream = stream.replace(b"\n", b"\r\n") if seed % 2 else stream
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), 40))
    assert _decode_in_pieces(stream, cuts) == _decode_in_pieces(stream, [])
    names = [name for name, _ in _decode_in_pieces(stream, cuts)]
    assert names[0] == "message_start" and names[-1] == "message_stop" and "ping" in names


def test_sse_multiline_data_comments_and_a_missing_final_blank_line():
    events = _decode_in_pieces(b": keep-alive\n\ndata: {\"a\":\ndata: 1}\n\nevent: x\ndata: last", [3, 17])
    assert events == [(None, b'{"a":\n1}'), ("x", b"last")]


@pytest.mark.parametrize("coding,encode", [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("br", brotli.compress), ("identity", lambda b: b),
])
def test_body_decoder_handles_every_coding_chunk_by_chunk(coding, encode):
    text = b"".join(payloads.chat_stream(include_usage=True)) * 5
    encoded = encode(text)
    decoder = BodyDecoder(coding, limit=10 * len(text))
    out = b"".join(decoder.feed(encoded[i:i + 37]) for i in range(0, len(encoded), 37))
    assert out == text


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def _zstd(data: bytes) -> bytes:
    from addon.decoding import zstd
    return zstd.compress(data)


@pytest.mark.parametrize("coding,encode", [
    ("gzip", gzip.compress), ("zstd", _zstd),  # one member (frame) per event, as a server flushing each
    ("deflate", _raw_deflate),  # raw deflate, without zlib's header: what some servers call deflate
])
@pytest.mark.parametrize("step", [1, 2, 37, 10_000])
def test_body_decoder_reads_every_member_and_raw_deflate(coding, encode, step):
    """A body of several gzip members (zstd frames) was read to the end of the first: the usage,
    in the last event, never seen; raw deflate was refused as undecodable. Clients decode both."""
    events = payloads.chat_stream(include_usage=True)
    encoded = encode(b"".join(events)) if coding == "deflate" else b"".join(encode(e) for e in events)
    decoder = BodyDecoder(coding, limit=1024 * 1024)
    out = b"".join(decoder.feed(encoded[i:i + step]) for i in range(0, len(encoded), step))
    assert out == b"".join(events)


def test_bytes_after_the_last_member_are_ignored_and_many_small_members_stop_at_the_limit():
    text = b"".join(payloads.chat_stream(include_usage=True))
    assert BodyDecoder("gzip", limit=10 * len(text)).feed(gzip.compress(text) + b"\0" * 8) == text
    with pytest.raises(DecodeError, match="exceeds"):
        BodyDecoder("gzip", limit=1024 * 1024).feed(gzip.compress(b"\0" * 200_000) * 10)


def test_body_decoder_stops_a_gzip_bomb_at_its_limit():
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))  # 50 MB of zeros in ~50 kB
    decoder = BodyDecoder("gzip", limit=1024 * 1024)
    with pytest.raises(DecodeError, match="exceeds"):
        decoder.feed(bomb)


def test_unknown_coding_is_refused_not_guessed():
    with pytest.raises(DecodeError, match="unsupported content-encoding"):
        BodyDecoder("compress", limit=10)


@pytest.mark.parametrize("raw,expected", [
    (payloads.USAGE_REASONING, TokenUsage(input_tokens=156, output_tokens=561, reasoning_tokens=512)),
    (payloads.USAGE_CACHED, TokenUsage(input_tokens=8, cache_read_tokens=4012, output_tokens=4)),
    ({"prompt_tokens": 100, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 60,
      "cache_write_tokens": 30}, "completion_tokens_details": None},
     TokenUsage(input_tokens=10, cache_read_tokens=60, cache_write_tokens=30, output_tokens=1)),
    # a cache write reported past the prompt's uncached part is that part: never a negative input
    ({"prompt_tokens": 100, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 60,
      "cache_write_tokens": 80}}, TokenUsage(cache_read_tokens=60, cache_write_tokens=40, output_tokens=1)),
    (payloads.RESPONSES_REASONING_USAGE, TokenUsage(input_tokens=45, output_tokens=1719, reasoning_tokens=1408)),
    ({"prompt_tokens": 4, "total_tokens": 4}, TokenUsage(input_tokens=4)),
])
def test_openai_usage_never_overlaps(raw, expected):
    assert openai.usage_from(raw) == expected


def test_anthropic_cache_creation_without_the_total_is_summed_from_the_split():
    raw = {"input_tokens": 5, "output_tokens": 2,
           "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20}}
    assert anthropic.usage_from(raw) == TokenUsage(input_tokens=5, cache_write_tokens=30, cache_write_1h_tokens=20,
                                                   output_tokens=2)


def test_malformed_usage_values_mark_the_usage_invalid_not_zero_and_not_a_crash():
    assert openai.OpenAI().parse_body(openai.CHAT, {"usage": {"prompt_tokens": "many"}}).invalid_usage \
        == "prompt_tokens='many' is not a whole number from 0 to 100,000,000"
    stream = openai.OpenAIStream(openai.CHAT)
    stream.feed(None, b'{"usage": {"prompt_tokens": 1e400}')  # cut-off JSON: no usage seen yet
    stream.feed(None, json.dumps({"model": "m", "choices": [], "usage": {"prompt_tokens": 3}}).encode())
    assert stream.observed.usage == TokenUsage(input_tokens=3) and stream.observed.invalid_usage is None
    stream.feed(None, json.dumps({"model": "m", "choices": [], "usage": {"prompt_tokens": -3}}).encode())
    assert stream.observed.usage is None and "prompt_tokens=-3" in stream.observed.invalid_usage


def test_one_huge_event_cut_into_small_pieces_decodes_in_linear_time():
    # Not a benchmark: re-joining the pending bytes per chunk took 134 s for this (quadratic);
    # linear decoding takes well under a second, so 10 s only catches the complexity class.
    event = b"data: " + b"x" * (15 * 1024 * 1024) + b"\n\n"
    decoder, started, events = SSEDecoder(), time.monotonic(), []
    for start in range(0, len(event), 1024):
        events += decoder.feed(event[start:start + 1024])
    assert time.monotonic() - started < 10
    assert events == [(None, b"x" * (15 * 1024 * 1024))]


def test_an_event_past_the_bound_stops_the_reading_not_the_stream():
    decoder = SSEDecoder()
    with pytest.raises(EventTooLarge, match="longer than 16 MB"):
        for _ in range(17 * 1024):
            decoder.feed(b"y" * 1024)


def test_reasoning_outside_completion_tokens_is_billed_as_output():
    # xAI (grok-3-mini): reasoning is not inside completion_tokens; total_tokens adds all three.
    xai = {"prompt_tokens": 32, "completion_tokens": 9, "total_tokens": 135,
           "completion_tokens_details": {"reasoning_tokens": 94}}
    assert openai.usage_from(xai) == TokenUsage(input_tokens=32, output_tokens=103, reasoning_tokens=94)
    # OpenAI: reasoning inside completion_tokens, and the total says so; nothing is added.
    assert openai.usage_from(payloads.USAGE_REASONING) == TokenUsage(input_tokens=156, output_tokens=561,
                                                                     reasoning_tokens=512)


def _event_stream() -> tuple[bytes, list[tuple[str, bytes]]]:
    from .bedrock_upstream import event_message
    expected = [("chunk", json.dumps({"bytes": "eyJ0eXBlIjoibWVzc2FnZV9zdG9wIn0=", "p": "a" * n}).encode())
                for n in range(0, 300, 37)]
    expected.append(("exception:throttlingException", b'{"message": "slow down"}'))
    wire = b"".join(event_message({":event-type": "chunk", ":content-type": "application/json",
                                   ":message-type": "event"}, payload) for _, payload in expected[:-1])
    wire += event_message({":message-type": "exception", ":exception-type": "throttlingException"}, expected[-1][1])
    return wire, expected


@pytest.mark.parametrize("seed", range(5))
def test_aws_event_stream_messages_are_the_same_however_the_bytes_are_cut(seed):
    wire, expected = _event_stream()
    rng = random.Random(seed)
    decoder, events, at = EventStreamDecoder(), [], 0
    while at < len(wire):
        step = rng.randint(1, 40)
        events += decoder.feed(wire[at:at + step])
        at += step
    assert events == expected


def test_aws_event_stream_refuses_a_huge_message_before_buffering_it():
    decoder = EventStreamDecoder()
    with pytest.raises(EventTooLarge):
        list(decoder.feed(struct.pack(">II", 1 << 30, 10) + b"\0" * 4))  # claims 1 GiB
    with pytest.raises(FramingError):
        list(EventStreamDecoder().feed(struct.pack(">II", 14, 10) + b"\0" * 4))  # shorter than its headers
