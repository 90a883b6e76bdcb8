"""OpenAI's Realtime API wire format: JSON events over a WebSocket (``GET /v1/realtime?model=...``).

Usage comes in each server event ``response.done`` (docs/provider-usage.md), ``response.usage``:
``input_tokens`` (all input: text, audio and images, cached or not) with ``input_token_details``
{text_tokens, audio_tokens, image_tokens, cached_tokens, cached_tokens_details {text_tokens,
audio_tokens, image_tokens}}, and ``output_tokens`` with ``output_token_details`` {text_tokens,
audio_tokens}. The session's model is in the upgrade's query and in ``session.created`` /
``session.updated`` (``session.model``); a client's ``session.update`` cannot change it (OpenAI
answers one that names another model with an error event), so client frames are not read.

The user's audio is transcribed, when the session asks for it, by another model
(``session.audio.input.transcription.model``; before the GA interface
``session.input_audio_transcription.model``), billed apart: its usage comes in
``conversation.item.input_audio_transcription.completed`` (``usage``, as a transcription's:
``type: tokens`` or ``duration``), for the item ``input_audio_buffer.committed`` named.
"""

from __future__ import annotations

import re

from pricing.usage import TokenUsage

from .base import InvalidUsage, as_dict, count, loads
from .openai_media import transcript_usage

PATH = "/v1/realtime"
TRANSCRIBED = "conversation.item.input_audio_transcription.completed"
COMMITTED = "input_audio_buffer.committed"
# Events are found by their type before any JSON is decoded: an audio delta is large and frequent.
_TYPE = re.compile(rb'"type"\s*:\s*"(response\.created|response\.done|session\.(?:created|updated)'
                   rb'|conversation\.item\.input_audio_transcription\.completed|input_audio_buffer\.committed)"')
_MODEL = re.compile(r"[\w.:/-]{1,200}")


def event_of_interest(frame: bytes) -> str | None:
    """The type of a frame that carries usage, a response's start or the model; None for the rest."""
    # From quote to quote: finding one byte is a memchr, which skips a 128 kB audio delta (base64,
    # no quotes) in microseconds; re.search, or find(b'"type"'), take 0.4 to 1 ms for it.
    at = frame.find(b'"')
    while at >= 0:
        if frame.startswith(b'"type"', at):
            found = _TYPE.match(frame, at)
            if found:
                return found.group(1).decode()
        at = frame.find(b'"', at + 1)
    return None


def decode(frame: bytes) -> dict | None:
    """The event as a JSON object; None when the frame is not one."""
    return loads(frame)


def session_model(event: dict) -> str | None:
    model = as_dict(event.get("session")).get("model")
    return model if isinstance(model, str) and _MODEL.fullmatch(model) else None


def transcription_model(event: dict) -> str | None:
    """The model a session transcribes the user's audio with, as ``session.created`` / ``.updated`` say."""
    session = as_dict(event.get("session"))
    model = (as_dict(as_dict(as_dict(session.get("audio")).get("input")).get("transcription")).get("model")
             or as_dict(session.get("input_audio_transcription")).get("model"))
    return model if isinstance(model, str) and _MODEL.fullmatch(model) else None


def transcription_usage(event: dict) -> TokenUsage | None:
    """The usage of an input transcription's ``completed`` event; None when it has none."""
    raw = event.get("usage")
    return transcript_usage(raw, None) if isinstance(raw, dict) else None


def item_of(event: dict) -> str:
    """The conversation item an event is about (a committed buffer, its transcription)."""
    item = event.get("item_id")
    return item if isinstance(item, str) else ""


def response_id(event: dict) -> str:
    """The id of the response a ``response.created`` or ``response.done`` is about ("" if none)."""
    found = as_dict(event.get("response")).get("id")
    return found if isinstance(found, str) else ""


def response_usage(event: dict) -> TokenUsage | None:
    """The usage of a ``response.done``, normalised (uncached and cached input apart, each with
    its audio and image part); None when the event has none."""
    raw = as_dict(event.get("response")).get("usage")
    if not isinstance(raw, dict):
        return None
    total_in, total_out = count(raw, "input_tokens", required=True), count(raw, "output_tokens", required=True)
    details, cached_details = raw.get("input_token_details"), None
    cached = count(details, "cached_tokens")
    cached_details = as_dict(details).get("cached_tokens_details")
    cached_audio, cached_image = count(cached_details, "audio_tokens"), count(cached_details, "image_tokens")
    audio, image = count(details, "audio_tokens"), count(details, "image_tokens")
    out_audio = count(raw.get("output_token_details"), "audio_tokens")
    if cached > total_in or cached_audio + cached_image > cached or cached_audio > audio or cached_image > image \
            or audio + image > total_in or out_audio > total_out:
        raise InvalidUsage(f"the parts of input_tokens={total_in} or output_tokens={total_out} exceed them")
    return TokenUsage(
        input_tokens=total_in - cached,
        input_audio_tokens=audio - cached_audio,
        input_image_tokens=image - cached_image,
        cache_read_tokens=cached,
        cache_read_audio_tokens=cached_audio,
        cache_read_image_tokens=cached_image,
        output_tokens=total_out,
        output_audio_tokens=out_audio,
    )


def response_status(event: dict) -> str | None:
    """``completed``, ``cancelled``, ``incomplete`` or ``failed`` (all billed for what they used)."""
    status = as_dict(event.get("response")).get("status")
    return status if isinstance(status, str) and len(status) <= 32 else None
