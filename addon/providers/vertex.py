"""Google Vertex AI: Gemini's generateContent and streamGenerateContent, and Anthropic's Claude by
rawPredict and streamRawPredict, under ``/v1/projects/{project}/locations/{location}/publishers/...``.

Vertex speaks each publisher's own wire format, so the bodies and streams are read by the Gemini
and Anthropic modules (docs/provider-usage.md, sections 3 and 4); only the paths differ, and the
model is named in the URL, not in Anthropic's body. A stream without ``alt=sse`` is one JSON array
of Gemini's chunks, read whole. The host follows the location, as the Google and Anthropic SDKs
build it (``vertex_host``). Prices: genai-prices' ``google`` provider, which ``vertex`` resolves to
(its Claude entries are Vertex's global-endpoint rates; docs/coverage.md).
"""

from __future__ import annotations

import re

from pricing.usage import TokenUsage

from . import anthropic, gemini
from .base import Observed, Provider, StreamParser, patterns

# Without a project and location: express mode (Gemini models on a Google API key, the global host).
_CALL = re.compile(r"/(v1|v1beta1)(?:/projects/([^/]+)/locations/([^/]+))?/publishers/(google|anthropic)/models/"
                   r"([^/:]+):([A-Za-z]+)")
_METERED = {"google": ("generateContent", "streamGenerateContent"),
            "anthropic": ("rawPredict", "streamRawPredict")}
# AnthropicVertex's count_tokens: .../publishers/anthropic/models/count-tokens:rawPredict (free).
_ANTHROPIC_COUNT = "count-tokens"
# Vertex's price page (https://cloud.google.com/vertex-ai/generative-ai/pricing, docs/coverage.md):
# counting tokens bills nothing; embeddings, Imagen, Veo, tuning and batch jobs are billed, not metered.
_FREE = patterns(r"/v1(?:beta1)?(?:/projects/[^/]+/locations/[^/]+)?/publishers/google/models/[^/:]+:(?:countTokens|"
                 r"computeTokens)",
                 r"/v1(?:beta1)?/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/count-tokens:rawPredict")
_LOCATED = re.compile(r"/v1(?:beta1)?/projects/[^/]+/locations/([^/]+)(?:/|$)")
_LOCATION = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MULTI_REGION = {"global": "aiplatform.googleapis.com", "us": "aiplatform.us.rep.googleapis.com",
                 "eu": "aiplatform.eu.rep.googleapis.com"}


def express(path: str) -> bool:
    """Whether ``path`` is an express-mode call, which a Google API key authenticates."""
    found = _CALL.fullmatch(path)
    return found is not None and _express(found)


def _express(found: re.Match) -> bool:
    """A call naming no project, to a Google model: express mode's (its API key stands for the project)."""
    return found.group(2) is None and found.group(4) == "google"


def vertex_host(location: str) -> str | None:
    """The host that serves a location, as the SDKs build it; None for a location no host can have."""
    if location in _MULTI_REGION:
        return _MULTI_REGION[location]
    return f"{location}-aiplatform.googleapis.com" if _LOCATION.fullmatch(location) else None


class Vertex(Provider):
    name = "vertex"
    prefix = "/vertex"
    default_upstream = None  # by location: host_for()
    # "*" stands for part of one DNS label (base.py): us-central1-aiplatform.googleapis.com.
    hosts = ("*-aiplatform.googleapis.com", "aiplatform.googleapis.com", "aiplatform.us.rep.googleapis.com",
             "aiplatform.eu.rep.googleapis.com")
    free = _FREE
    billable = patterns(gemini.LIVE_SESSIONS)

    def __init__(self, counter=None):
        super().__init__(counter)
        self._gemini = gemini.Gemini(counter)
        self._anthropic = anthropic.Anthropic(counter)

    def host_for(self, path: str) -> str | None:
        if express(path):
            return vertex_host("global")
        found = _LOCATED.match(path)
        return vertex_host(found.group(1)) if found else None

    def metered(self, path: str) -> bool:
        found = _CALL.fullmatch(path)
        return (found is not None and found.group(6) in _METERED[found.group(4)] and found.group(5) != _ANTHROPIC_COUNT
                and (found.group(2) is not None or _express(found)))

    def endpoint(self, path: str) -> str:
        found = _CALL.fullmatch(path)
        if found is None:
            return path
        version, project, _, publisher, model, method = found.groups()
        model = model if model == _ANTHROPIC_COUNT else "{model}"
        where = "" if project is None else "/projects/{project}/locations/{location}"
        return f"/{version}{where}/publishers/{publisher}/models/{model}:{method}"

    def _reader(self, path: str) -> tuple[Provider, str]:
        """The module that reads this path's bodies, and the path it knows them by."""
        found = _CALL.fullmatch(path)
        if found and found.group(4) == "anthropic":
            return self._anthropic, anthropic.MESSAGES
        return self._gemini, path

    def path_model(self, path: str) -> str | None:
        found = _CALL.fullmatch(path)
        return found.group(5) if found else None

    def price_region(self, path: str, observed: Observed) -> str | None:
        """The location of a Claude call: Vertex bills recent models 10% more off the global endpoint."""
        found = _CALL.fullmatch(path)
        return found.group(3) if found and found.group(4) == "anthropic" else None

    # The readers leave a model the answer does not name to the row, which takes the URL's (path_model).
    def parse_body(self, path: str, body) -> Observed:
        reader, known_as = self._reader(path)
        return reader.parse_body(known_as, body)

    def stream_parser(self, path: str) -> StreamParser:
        reader, known_as = self._reader(path)
        return reader.stream_parser(known_as)

    def estimate(self, path, request, parser, model) -> TokenUsage | None:
        reader, known_as = self._reader(path)
        return reader.estimate(known_as, request, parser, model)

    def error_body(self, status: int, message: str, code: str) -> bytes:
        return self._gemini.error_body(status, message, code)  # Google's error shape, for both SDKs
