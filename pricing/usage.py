"""The normalised usage record every provider parser produces and pricing consumes.

The token counts never overlap, so a price is simply count x rate summed over the fields:

- ``input_tokens``: input billed at the normal input rate (no cache reads, no cache writes);
- ``cache_read_tokens``: input read from the provider's prompt cache;
- ``cache_write_tokens``: input written to the cache (all TTLs);
- ``output_tokens``: all billed output, reasoning included.

Some fields are *subsets*, kept because they are priced or reported differently:
``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written with a one-hour TTL,
``reasoning_tokens`` the part of ``output_tokens`` spent on reasoning; ``input_audio_tokens`` and
``input_image_tokens`` are parts of ``input_tokens``, ``output_audio_tokens`` and
``output_image_tokens`` parts of ``output_tokens``, ``cache_read_audio_tokens`` and
``cache_read_image_tokens`` parts of ``cache_read_tokens`` (a transcription's audio, an image edit's
pictures, a generated image: each has its own rate).

Units that are not tokens, for the APIs billed by them: ``images`` generated (priced per image),
``audio_seconds`` of audio transcribed (priced per minute), ``characters`` of text spoken.

Tools a model ran on the provider's side, billed per call or per session on top of the tokens
(``TOOL_FIELDS``): ``web_search_requests`` (searches billed per search), ``web_fetch_requests``
(pages fetched), ``file_search_calls``, ``code_executions`` (code run in a container),
``containers`` (the distinct containers that code ran in: billed by the session's time),
``grounded_prompts`` (prompts billed once when grounded with a search, whatever it searched) and
``image_generation_calls`` (images a chat model had an image model make: billed at that model's
rates for tokens the answer does not report, so never priced). ``web_search_preview_requests`` is
the part of ``web_search_requests`` OpenAI's older search tool ran, at a rate of its own on some models.
``guardrail_checks``: 1 for a call a Bedrock guardrail checked (billed per text unit and policy, which
an answer reports only with its trace on: never priced). ``advisor_calls``: the times Anthropic's advisor
tool had another model advise (billed at that model's rates, on tokens a row of the calling model
cannot hold: never priced).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from decimal import Decimal

# Not a count: a duration, to the millisecond.
_FRACTIONAL = frozenset({"audio_seconds"})
_MEDIA_TOKENS = ("input_audio_tokens", "cache_read_audio_tokens", "output_audio_tokens", "input_image_tokens",
                 "cache_read_image_tokens", "output_image_tokens")
TOOL_FIELDS = ("web_search_requests", "web_fetch_requests", "file_search_calls", "code_executions", "containers",
               "grounded_prompts", "image_generation_calls", "web_search_preview_requests", "guardrail_checks",
               "advisor_calls")


@dataclass(frozen=True)
class ImageOptions:
    """What a per-image price depends on besides the count: the images' size ("1024x1024") and
    quality ("standard", "hd"), as the request asked for them."""

    size: str
    quality: str = "standard"


@dataclass
class TokenUsage:
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_requests: int = 0
    input_audio_tokens: int = 0
    cache_read_audio_tokens: int = 0
    cache_read_image_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    images: int = 0
    audio_seconds: Decimal | int = 0
    characters: int = 0
    web_fetch_requests: int = 0
    file_search_calls: int = 0
    code_executions: int = 0
    containers: int = 0
    grounded_prompts: int = 0
    image_generation_calls: int = 0
    web_search_preview_requests: int = 0
    guardrail_checks: int = 0
    advisor_calls: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _FRACTIONAL and isinstance(value, Decimal) and value.is_finite() and value >= 0:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{f.name} must be a non-negative integer, got {value!r}")

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def has_units(self) -> bool:
        """Whether the call is billed in units other than tokens: seconds, characters, or images
        without tokens (a GPT Image call counts its images but is billed in tokens)."""
        return bool(self.audio_seconds or self.characters or self.images and not self.output_tokens)

    @property
    def has_media_tokens(self) -> bool:
        """Whether some of its tokens are audio or image ones, which most models bill at rates of their
        own (gpt-4o-transcribe's audio input: $6 per million, its text $2.50)."""
        return any(getattr(self, name) for name in _MEDIA_TOKENS)

    @property
    def has_tools(self) -> bool:
        return any(getattr(self, name) for name in TOOL_FIELDS)

    def plus(self, other: TokenUsage) -> TokenUsage:
        """Two parts of one call billed alike (a summary sampled before the answer, and the answer)."""
        return TokenUsage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def without_tools(self) -> TokenUsage:
        """The same call had it used no server-side tool: its tokens alone."""
        return replace(self, **dict.fromkeys(TOOL_FIELDS, 0))
