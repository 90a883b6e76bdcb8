"""AWS Bedrock Runtime: InvokeModel, InvokeModelWithResponseStream, Converse and ConverseStream.

Reached through the forward mode only (addon/forward.py): requests are signed with SigV4 over the
host name and the exact path, so they go on byte for byte to ``bedrock-runtime.<region>.amazonaws.com``
(or the ``--upstream bedrock=URL``, the Host header unchanged); the proxy never needs AWS credentials.

The model is the path's (``/model/{modelId}/invoke``; an inference profile such as
``us.anthropic.claude-...`` included), priced with genai-prices' ``aws`` prices. Usage:

- InvokeModel: the body's, in the model's own format (Anthropic's ``usage``; Nova's
  ``usage.inputTokens``), else the ``x-amzn-bedrock-*-token-count`` response headers;
- InvokeModelWithResponseStream: AWS event-stream messages whose ``chunk`` carries the model's
  event as base64 ``bytes`` (Anthropic's stream events), the last with
  ``amazon-bedrock-invocationMetrics``;
- Converse: ``usage`` (``inputTokens`` excludes the cache reads and writes, which have their own
  fields); ConverseStream: the ``metadata`` event's ``usage``;
- the OpenAI-compatible Chat Completions API (``/openai/v1/chat/completions``, OpenAI's gpt-oss
  models, a Bedrock API key as the bearer token): OpenAI's wire format, read as OpenAI's, the model
  the body's (``openai.gpt-oss-120b-1:0``). A stream's usage only if the client asked for it (the
  request is never changed here: it may be signed).

A stream cut before its usage (or ended by an exception) is estimated as the providers' own APIs'
are (``partial``): Claude's events as Anthropic's (the input its message_start reported, the output
counted from the text so far); a ConverseStream that began (messageStart) by counting the request's
text and the text streamed, as its usage comes only in the last event. Other models' own events
(Llama, Mistral, Nova through InvokeModel) are not read for text: such a stream stays unpriced.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from urllib.parse import unquote

from pricing.usage import TokenUsage

from . import anthropic, openai
from .base import Observed, Provider, StreamParser, as_dict, count, loads, patterns, tier_name

INVOKE, INVOKE_STREAM, CONVERSE, CONVERSE_STREAM = "invoke", "invoke-with-response-stream", "converse", \
    "converse-stream"
_CALL = re.compile(r"/model/([^/]{1,2048})/(invoke|invoke-with-response-stream|converse|converse-stream)")
# A model given as an ARN is one path segment, its '/' encoded (botocore quotes the modelId whole).
_ARN_CALL = re.compile(r"/model/(arn(?:%3[aA][A-Za-z0-9._-]*){5}(?:%2[fF](?:[A-Za-z0-9_-][A-Za-z0-9._-]*|%3[aA])+)+)/"
                       r"(?:invoke|invoke-with-response-stream|converse|converse-stream)")
# The foundation model an ARN names, when it names one (an application inference profile does not).
_ARN_MODEL = re.compile(r"arn:aws[a-z-]*:bedrock:[^:]*:[^:]*:(?:inference-profile|foundation-model)/([^/]+)")
OPENAI_CHAT = "/openai/v1/chat/completions"
_FREE = patterns(r"/model/[^/]+/count-tokens")
_BILLABLE = patterns(r"/async-invoke(?:/.*)?", r"/guardrail/.+/apply")
# A guardrail on InvokeModel (and on the OpenAI-compatible API) is named in this header; on Converse,
# in the body's guardrailConfig. Its checks are billed on top of the tokens (pricing.UNKNOWN_FEES).
_GUARDRAIL_HEADER = "x-amzn-bedrock-guardrailidentifier"
_HEADERS = {"input_tokens": "x-amzn-bedrock-input-token-count", "output_tokens": "x-amzn-bedrock-output-token-count",
            "cache_read_tokens": "x-amzn-bedrock-cache-read-input-token-count",
            "cache_write_tokens": "x-amzn-bedrock-cache-write-input-token-count"}


def _call(path: str) -> tuple[str, str] | None:
    """(model id, operation) of a metered path; an ARN's model as the ARN names it."""
    found = _CALL.fullmatch(path)
    if found is None:
        return None
    model = unquote(found.group(1))
    named = _ARN_MODEL.fullmatch(model)
    return (named.group(1) if named else model), found.group(2)


def converse_usage(raw: object) -> TokenUsage | None:
    if not isinstance(raw, dict):
        return None
    written = count(raw, "cacheWriteInputTokens") or count(raw, "cacheWriteInputTokenCount")
    # cacheDetails: the writes by time to live ([{"ttl": "5m"|"1h", "inputTokens"}]); an hour's cost more.
    details = raw.get("cacheDetails")
    one_hour = sum(count(d, "inputTokens") for d in details if isinstance(d, dict) and d.get("ttl") == "1h") \
        if isinstance(details, list) else 0
    return TokenUsage(input_tokens=count(raw, "inputTokens", required=True),
                      cache_read_tokens=count(raw, "cacheReadInputTokens") or count(raw, "cacheReadInputTokenCount"),
                      cache_write_tokens=written, cache_write_1h_tokens=min(one_hour, written),
                      output_tokens=count(raw, "outputTokens", required=True))


LATENCY_OPTIMIZED = "latency_optimized"


def _tier(answer: dict) -> str | None:
    """Converse's ``serviceTier`` ({"type": "priority"}), or latency-optimized inference
    (``performanceConfig``): rates other than the standard ones, so not priced at them
    (pricing.priced_tier) unless a price file has them."""
    return _tier_of(as_dict(answer.get("performanceConfig")).get("latency"),
                    as_dict(answer.get("serviceTier")).get("type"))


def _tier_of(latency: object, tier: object) -> str | None:
    """One rule for the answer's body and InvokeModel's headers: latency-optimized, else the tier."""
    return LATENCY_OPTIMIZED if latency == "optimized" else tier_name(tier)


def _metrics_usage(raw: object) -> TokenUsage | None:
    """``amazon-bedrock-invocationMetrics``, the last chunk of every InvokeModel stream."""
    if not isinstance(raw, dict):
        return None
    return TokenUsage(input_tokens=count(raw, "inputTokenCount", required=True),
                      cache_read_tokens=count(raw, "cacheReadInputTokenCount"),
                      cache_write_tokens=count(raw, "cacheWriteInputTokenCount"),
                      output_tokens=count(raw, "outputTokenCount", required=True))


def _invoke_usage(raw: object) -> TokenUsage | None:
    """An InvokeModel body's usage, in the formats of the models that report one in it."""
    body = as_dict(raw)
    usage = body.get("usage")
    if isinstance(usage, dict) and "input_tokens" in usage:  # Anthropic's Messages
        return anthropic.usage_from(usage)
    if isinstance(usage, dict) and "inputTokens" in usage:  # Amazon Nova
        return converse_usage(usage)
    if "prompt_token_count" in body:  # Meta Llama
        return TokenUsage(input_tokens=count(body, "prompt_token_count", required=True),
                          output_tokens=count(body, "generation_token_count", required=True))
    return None


class InvokeStream(anthropic.AnthropicStream):
    """An InvokeModel stream: each ``chunk`` holds the model's own event (Anthropic's, for Claude)."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self._model = model
        self.observed.model = model

    def feed(self, event: str | None, data: bytes) -> None:
        if event is not None and event.startswith("exception:"):
            self.observed.error = event.partition(":")[2][:100]
            return
        if event != "chunk":
            return
        try:
            inner = base64.b64decode(as_dict(loads(data)).get("bytes") or b"", validate=True)
        except (binascii.Error, TypeError, ValueError):
            return
        # The metrics are a key of the last event itself: the name inside a text delta is not them.
        if b"amazon-bedrock-invocationMetrics" in inner and \
                (metrics := as_dict(loads(inner)).get("amazon-bedrock-invocationMetrics")) is not None:
            if self.observed.usage is None:  # a model whose events carry no usage of their own
                self.observed.take_usage(_metrics_usage, metrics)
            self.observed.complete = True
        kind = re.search(rb'"type"\s*:\s*"([a-z_]+)"', inner[:200])
        super().feed(kind.group(1).decode() if kind else None, inner)
        self.observed.model = self._model  # the path names what is billed (an inference profile)


class ConverseStream(StreamParser):
    def __init__(self, model: str) -> None:
        super().__init__()
        self.observed.model = model
        self.started = False  # messageStart came: the model took the request (an estimate counts it)

    def feed(self, event: str | None, data: bytes) -> None:
        if event is not None and event.startswith("exception:"):
            self.observed.error = event.partition(":")[2][:100]
        elif event == "messageStart":
            self.started = True
        elif event == "contentBlockDelta":
            self.keep_delta(data)
        elif event == "metadata":
            metadata = as_dict(loads(data))
            self.observed.take_usage(converse_usage, metadata.get("usage"))
            self.observed.service_tier = _tier(metadata) or self.observed.service_tier
            self.observed.complete = True

    def output_text(self) -> str:
        """Every delta billed as output: text, reasoning, and a tool call's input as it is streamed."""
        parts = []
        for data in self.deltas:
            delta = as_dict(as_dict(loads(data)).get("delta"))
            for part in (delta.get("text"), as_dict(delta.get("reasoningContent")).get("text"),
                         as_dict(delta.get("toolUse")).get("input")):
                if isinstance(part, str):
                    parts.append(part)
        return "".join(parts)


def converse_texts(value: object) -> list[str]:
    """The text of Converse's messages or system blocks, each billed as input: text, a tool call's
    input, a tool's result (its text and JSON), reasoning. Converse nests a tool's result under
    ``toolResult``, where the texts of other formats (base.texts_in) never look."""
    if isinstance(value, str):  # not Converse's shape, but a text all the same
        return [value]
    texts: list[str] = []
    for block in value if isinstance(value, list) else ():
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        if "json" in block:
            texts.append(json.dumps(block["json"]))
        if "input" in as_dict(block.get("toolUse")):
            texts.append(json.dumps(block["toolUse"]["input"]))
        reasoning = as_dict(as_dict(block.get("reasoningContent")).get("reasoningText")).get("text")
        if isinstance(reasoning, str):
            texts.append(reasoning)
        texts += converse_texts(block.get("content")) + converse_texts(as_dict(block.get("toolResult")).get("content"))
    return texts


class Bedrock(Provider):
    name = "bedrock"
    # The dual-stack (IPv6) names too: botocore's endpoint rules with AWS_USE_DUALSTACK_ENDPOINT=true.
    hosts = ("bedrock-runtime.*.amazonaws.com", "bedrock-runtime-fips.*.amazonaws.com", "bedrock-runtime.*.api.aws",
             "bedrock-runtime-fips.*.api.aws")
    billable = _BILLABLE
    free = _FREE

    def __init__(self, counter=None):
        super().__init__(counter)
        self._anthropic = anthropic.Anthropic(counter)  # estimates a cut Claude stream as for its own API
        self._openai = openai.OpenAI(counter)  # reads (and estimates) the OpenAI-compatible API's calls

    def endpoint(self, path: str) -> str:
        found = _call(path)
        return f"/model/{{modelId}}/{found[1]}" if found else path

    def metered(self, path: str) -> bool:
        return _call(path) is not None or path == OPENAI_CHAT

    def escaped_path(self, path: str) -> str | None:
        return path if _ARN_CALL.fullmatch(path) else None

    def path_model(self, path: str) -> str | None:
        found = _call(path)
        return found[0] if found else None

    def parse_body(self, path: str, body: object) -> Observed:
        if path == OPENAI_CHAT:
            return self._openai.parse_body(path, body)
        found = _call(path)
        if found is None or not isinstance(body, dict):
            return Observed()
        model, operation = found
        observed = Observed(model=model, complete=True)
        if operation == CONVERSE:
            observed.take_usage(converse_usage, body.get("usage"))
            observed.service_tier = _tier(body)
        else:
            observed.take_usage(_invoke_usage, body)
        return observed

    def guardrail_in_headers(self, headers) -> bool:
        return bool(headers.get(_GUARDRAIL_HEADER, "").strip())

    def guardrail_in_request(self, path: str, request: Callable[[], dict | None], raw: bytes | None) -> bool:
        found = _call(path)
        if found is None or found[1] not in (CONVERSE, CONVERSE_STREAM):
            return False
        if raw is not None and b"guardrailConfig" not in raw:
            return False  # most calls: no body decoded for this
        parsed = request()
        if parsed is None:  # too large to decode (inline documents), naming it: not priced at its tokens
            return raw is not None
        return bool(as_dict(parsed.get("guardrailConfig")).get("guardrailIdentifier"))

    def usage_in_headers(self, headers) -> TokenUsage | None:
        if _HEADERS["input_tokens"] not in headers:
            return None
        return TokenUsage(**{field: _header_count(headers, name) for field, name in _HEADERS.items()})

    def tier_in_headers(self, headers) -> str | None:
        return _tier_of(headers.get("x-amzn-bedrock-performanceconfig-latency"),
                        headers.get("x-amzn-bedrock-service-tier"))

    def stream_parser(self, path: str) -> StreamParser:
        if path == OPENAI_CHAT:
            return self._openai.stream_parser(path)
        found = _call(path)
        model = found[0] if found else ""
        return ConverseStream(model) if found and found[1] == CONVERSE_STREAM else InvokeStream(model)

    def estimate(self, path, request, parser, model) -> TokenUsage | None:
        if path == OPENAI_CHAT:
            return self._openai.estimate(path, request, parser, model)
        if isinstance(parser, InvokeStream) and parser.observed.usage is not None:  # Claude's message_start came
            return self._anthropic.estimate(anthropic.MESSAGES, request, parser, model)
        if not isinstance(parser, ConverseStream) or not parser.started or self.counter is None or request is None:
            return None  # refused before it began (an exception first), or a stream we cannot read
        prompt = converse_texts(request.get("system")) + converse_texts(request.get("messages"))
        tools = as_dict(request.get("toolConfig")).get("tools")
        if tools:  # their specs are billed as input too
            prompt.append(json.dumps(tools))
        return TokenUsage(input_tokens=sum(self.counter.count(text, None) for text in prompt),
                          output_tokens=self.counter.count(parser.output_text(), None))

    def error_body(self, status: int, message: str, code: str) -> bytes:
        # botocore reads the error code from "__type" and the message from "message".
        return json.dumps({"__type": code, "message": message}).encode()


def _header_count(headers, name: str) -> int:
    return count({name: _number(headers.get(name))}, name)  # a refusal names the header


def _number(value: str | None) -> object:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return value[:40]  # count() says why it is not a token count
