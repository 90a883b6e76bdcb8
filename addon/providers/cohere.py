"""Cohere v2: /v2/chat (plain and streamed) and /v2/embed.

Billing follows ``billed_units``, never the raw ``tokens`` (which include the prompt template
and can be far larger). Streams carry usage only in ``message-end`` (docs/provider-usage.md,
section 5). Chat responses name no model; the request's ``model`` is used.
"""

from __future__ import annotations

import json

from pricing.usage import TokenUsage

from .base import Observed, Provider, StreamParser, count, loads

CHAT = "/v2/chat"
EMBED = "/v2/embed"


def usage_from(billed: object) -> TokenUsage | None:
    if not isinstance(billed, dict):
        return None
    return TokenUsage(input_tokens=count(billed, "input_tokens"), output_tokens=count(billed, "output_tokens"))


class CohereStream(StreamParser):
    def feed(self, event: str | None, data: bytes) -> None:
        if b'"message-end"' not in data and b'"content-delta"' in data:
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
            content = (((loads(data) or {}).get("delta") or {}).get("message") or {}).get("content") or {}
            texts.append(str(content.get("text") or "") if isinstance(content, dict) else "")
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
        if self.counter is None or parser is None:
            return None
        return TokenUsage(output_tokens=self.counter.count(parser.output_text(), None))

    def error_body(self, status: int, message: str, code: str) -> bytes:
        return json.dumps({"message": message}).encode()
