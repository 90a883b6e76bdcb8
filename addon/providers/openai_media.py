"""OpenAI's images and audio APIs: what each call is billed in, read from its response or request.

- ``/v1/images/generations``, ``/v1/images/edits``: GPT Image models report ``usage`` (input text
  and image tokens, output tokens); every call counts the images in ``data`` (dall-e is priced
  per image, by size and quality).
- ``/v1/audio/transcriptions``, ``/translations``: ``usage`` of type ``tokens`` (gpt-4o
  transcribe models: audio and text input tokens, output tokens) or ``duration`` (whisper-1,
  seconds); ``verbose_json`` also gives ``duration``. A transcript answered as plain text carries
  neither: the duration of the uploaded file is read from its header when it is a WAV file
  (``estimated``), else the call is unpriced with the reason.
- ``/v1/audio/speech``: tts-1 and tts-1-hd bill the characters of ``input`` (``counted``);
  gpt-4o-mini-tts bills tokens, reported only in the ``speech.audio.done`` event of an SSE
  answer (``stream_format=sse``). Audio answers pass through as they arrive, never held whole.

Field names: the official SDK's types (``images_response.py``, ``audio/transcription.py``,
``audio/transcription_text_done_event.py``); docs/coverage.md.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from pricing.usage import ImageOptions, TokenUsage

from ..audio import wav_seconds
from .base import MAX_REQUESTS_PER_CALL, InvalidUsage, Observed, StreamParser, as_dict, count, loads

IMAGE_GENERATIONS = "/v1/images/generations"
IMAGE_EDITS = "/v1/images/edits"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
SPEECH = "/v1/audio/speech"
IMAGES = (IMAGE_GENERATIONS, IMAGE_EDITS)
TRANSCRIPTS = (TRANSCRIPTIONS, TRANSLATIONS)
PATHS = (*IMAGES, *TRANSCRIPTS, SPEECH)
# Speech models billed per character of input (OpenAI's price page: "per 1M characters").
_PER_CHARACTER = ("tts-1", "tts-1-hd")
_MAX_AUDIO_SECONDS = Decimal(24 * 3600)
_DONE_EVENTS = ("transcript.text.done", "speech.audio.done")
# A streamed GPT Image answer: each image ends with one of these, carrying usage. How usage is split
# over the events of several images is not documented, so only a one-image stream is priced.
_IMAGE_DONE = ("image_generation.completed", "image_edit.completed")
_DONE_MARKS = tuple(f'"{kind}"'.encode() for kind in (*_DONE_EVENTS, *_IMAGE_DONE))


def observe(path: str, body: object) -> Observed:
    """A complete JSON answer of one of PATHS."""
    observed = Observed(complete=True)
    if not isinstance(body, dict):
        return observed
    observed.model = body.get("model") if isinstance(body.get("model"), str) else None
    if path in IMAGES:
        observed.take_usage(lambda raw: _image_usage(raw, body.get("data")), body.get("usage"))
    elif path in TRANSCRIPTS:
        observed.take_usage(lambda raw: transcript_usage(raw, body.get("duration")), body.get("usage"))
    return observed


def _image_usage(raw: object, data: object) -> TokenUsage | None:
    """None for an answer with neither (an error body): nothing was generated, nothing reported."""
    if not isinstance(raw, dict) and not isinstance(data, list):
        return None
    images = len(data) if isinstance(data, list) else 0
    if images > MAX_REQUESTS_PER_CALL:
        raise InvalidUsage(f"data holds {images:,} images, more than {MAX_REQUESTS_PER_CALL:,}")
    if not isinstance(raw, dict):
        return TokenUsage(images=images)
    prompt, output = count(raw, "input_tokens", required=True), count(raw, "output_tokens", required=True)
    cached = min(count(raw, "input_tokens_details", "cached_tokens"), prompt)
    return TokenUsage(
        input_tokens=prompt - cached, cache_read_tokens=cached, output_tokens=output,
        input_image_tokens=min(count(raw, "input_tokens_details", "image_tokens"), prompt - cached),
        output_image_tokens=min(count(raw, "output_tokens_details", "image_tokens"), output),
        images=images)


def transcript_usage(raw: object, duration: object) -> TokenUsage | None:
    """A transcript's ``usage`` (``type: tokens`` or ``duration``; also a realtime session's input
    transcription), else the answer's ``duration``; None when neither is there."""
    usage = as_dict(raw)
    if usage.get("type") == "tokens":
        prompt = count(usage, "input_tokens", required=True)
        return TokenUsage(input_tokens=prompt, output_tokens=count(usage, "output_tokens", required=True),
                          input_audio_tokens=min(count(usage, "input_token_details", "audio_tokens"), prompt))
    seconds = usage.get("seconds") if usage.get("type") == "duration" else duration
    return None if seconds is None else TokenUsage(audio_seconds=_seconds(seconds))


def _seconds(value: object) -> Decimal:
    try:
        seconds = Decimal(str(value)).quantize(Decimal("0.001"))
    except (InvalidOperation, ValueError):
        seconds = Decimal(-1)
    # NaN (Python's json reads it) quantizes to NaN, which no comparison may touch
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not seconds.is_finite() \
            or not 0 <= seconds <= _MAX_AUDIO_SECONDS:
        shown = repr(value)[:40]
        raise InvalidUsage(f"audio duration {shown} is not a number of seconds from 0 to {_MAX_AUDIO_SECONDS}")
    return seconds


class MediaStream(StreamParser):
    """A streamed transcription (``transcript.text.*``) or speech (``speech.audio.*``): the usage is
    in the ``.done`` event. Audio deltas are large and carry nothing we need: never decoded."""

    def __init__(self, path: str):
        super().__init__()
        self.speech = path == SPEECH
        self.images = 0  # the images a streamed GPT Image answer completed

    def feed(self, event: str | None, data: bytes) -> None:
        if not any(mark in data for mark in _DONE_MARKS) and b'"error"' not in data:
            return  # a delta: a substring search, never a JSON decode
        payload = loads(data) or {}
        if payload.get("type") in _IMAGE_DONE:
            self.images += 1
            self.observed.complete = True
            if self.images == 1:
                self.observed.take_usage(lambda raw: _image_usage(raw, [None]), payload.get("usage"))
            else:  # several images: not priced from one's usage, nor from a sum that may count twice
                self.observed.usage = None
                self.observed.unknown_usage = ("a streamed answer of several images is not metered: how its "
                                               "usage splits over their completed events is not documented")
        elif payload.get("type") in _DONE_EVENTS:
            self.observed.complete = True
            self.observed.take_usage(self._usage, payload.get("usage"))
        elif isinstance(payload.get("error"), dict):
            self.observed.error = str(payload["error"].get("type") or payload["error"].get("code") or "error")

    def _usage(self, raw: object) -> TokenUsage | None:
        if not isinstance(raw, dict):
            return None
        usage = transcript_usage({**raw, "type": "tokens"}, None)
        if usage is not None and self.speech:  # what a speech model outputs is audio
            usage.output_audio_tokens = usage.output_tokens
        return usage

    def output_text(self) -> str:
        return ""


def counted(path: str, request: dict | None, model: str | None) -> TokenUsage | None:
    """Speech on a model billed per character: the characters of its input, as billed."""
    spoken = (request or {}).get("input")
    if path != SPEECH or model not in _PER_CHARACTER or not isinstance(spoken, str):
        return None
    return TokenUsage(characters=len(spoken))


def image_options(path: str, request: dict | None) -> ImageOptions | None:
    """DALL·E's price per image depends on the size and quality asked for (a JSON body, or an edit's
    form): OpenAI's defaults are 1024x1024 and standard ("auto" is the default too)."""
    if path not in IMAGES:
        return None
    size, quality = ((request or {}).get(name) for name in ("size", "quality"))
    return ImageOptions(size if isinstance(size, str) and size != "auto" else "1024x1024",
                        quality if isinstance(quality, str) and quality != "auto" else "standard")


def estimate(path: str, request: dict | None) -> TokenUsage | None:
    """A transcript without a reported duration: the uploaded file's own, when it is a WAV file."""
    upload = as_dict((request or {}).get("file"))
    if path not in TRANSCRIPTS or not isinstance(upload.get("head"), bytes):
        return None
    seconds = wav_seconds(upload["head"], int(upload.get("bytes") or 0))
    return None if seconds is None else TokenUsage(audio_seconds=seconds)


def missing(path: str) -> str:
    """Why a successful call on one of PATHS has no usage we could price."""
    if path in TRANSCRIPTS:
        return ("the response reported no duration (response_format json or verbose_json reports it) and the "
                "audio file is not a WAV file whose header gives it")
    if path == SPEECH:
        return "gpt-4o-mini-tts reports its tokens only with stream_format=sse"
    return "the response carried no usage"
