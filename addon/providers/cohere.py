"""Cohere v2: /v2/chat (plain and streamed) and /v2/embed.

Billing follows ``billed_units``, never the raw ``tokens`` (which include the prompt template
and can be far larger). Streams carry usage only in ``message-end`` (docs/provider-usage.md,
section 5). Chat responses name no model; the request's ``model`` is used.
"""

from __future__ import annotations

import json

from pricing.usage import TokenUsage

from .base import Observed, Provider, StreamParser, as_dict, count, loads, texts_in

CHAT = "/v2/chat"
EMBED = "/v2/embed"


def usage_from(billed: object) -> TokenUsage | None:
    """``billed_units``: text tokens, and an embed's image tokens (or images) beside them, which
    Cohere bills at a rate of their own (pricing.listprices leaves them unpriced without one)."""
    if not isinstance(billed, dict):
        return None
    images = count(billed, "image_tokens")
    return TokenUsage(input_tokens=count(billed, "input_tokens") + images, input_image_tokens=images,
                      output_tokens=count(billed, "output_tokens"), images=count(billed, "images"))


# The events whose text is billed as output: the answer, the tool plan, a tool call's arguments.
_OUTPUT_DELTAS = (b'"content-delta"', b'"tool-plan-delta"', b'"tool-call-delta"')


class CohereStream(StreamParser):
    def feed(self, event: str | None, data: bytes) -> None:
        if b'"message-end"' not in data and any(kind in data for kind in _OUTPUT_DELTAS):
            self.keep_delta(data)
            return
        payload = loads(data) or {}
        if payload.get("type") == "message-end":
            delta = payload.get("delta") or {}
            self.observed.take_usage(usage_from, (delta.get("usage") or {}).get("billed_units"))
            self.observed.complete = True
            if delta.get("finish_reason") == "ERROR":
                self.observed.error = "ERROR"

    def output_text(self) -> str:
        texts = []
        for data in self.deltas:
            message = as_dict(as_dict(as_dict(loads(data)).get("delta")).get("message"))
            call = as_dict(as_dict(message.get("tool_calls")).get("function"))
            for part in (as_dict(message.get("content")).get("text"), message.get("tool_plan"), call.get("arguments")):
                if isinstance(part, str):
                    texts.append(part)
        return "".join(texts)


class Cohere(Provider):
    name = "cohere"
    prefix = "/cohere"
    default_upstream = "https://api.cohere.com"
    hosts = ("api.cohere.com", "api.cohere.ai")


    def metered(self, path: str) -> bool:
        return path in (CHAT, EMBED)

    def parse_body(self, path: str, body) -> Observed:
        if not isinstance(body, dict):
            return Observed()
        billed = (body.get("usage") or {}).get("billed_units") if path == CHAT else \
            (body.get("meta") or {}).get("billed_units")
        observed = Observed(complete=True)
        observed.take_usage(usage_from, billed)
        return observed

    def stream_parser(self, path: str) -> StreamParser:
        return CohereStream()

    def estimate(self, path, request, parser, model) -> TokenUsage | None:
        """A stream cut before ``message-end``: the request's messages (and tools) in, what streamed
        out; nothing known at all (no request to read) is unpriced, never $0."""
        if self.counter is None or parser is None or request is None:
            return None
        prompt = texts_in(request.get("messages"))
        if request.get("tools"):  # their specs are billed as input too
            prompt.append(json.dumps(request["tools"]))
        usage = TokenUsage(input_tokens=sum(self.counter.count(text, None) for text in prompt),
                           output_tokens=self.counter.count(parser.output_text(), None))
        return usage if usage.input_tokens or usage.output_tokens else None

    def error_body(self, status: int, message: str, code: str) -> bytes:
        return json.dumps({"message": message}).encode()
