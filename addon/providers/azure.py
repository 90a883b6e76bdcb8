"""Azure OpenAI: OpenAI's wire format under ``/azure``, one upstream per resource
(``--upstream azure=https://NAME.openai.azure.com``).

Three differences from OpenAI's own API matter here:

- its api-versions before 2024-09-01 refuse ``stream_options`` (a 400, "Unrecognized request
  argument supplied: stream_options"), so only a stream to a later one, or to the v1 API
  (``/openai/v1/...``, no api-version), is asked for its usage; an older one's stream is estimated;
- a deployment's path names it (``/openai/deployments/{deployment}/chat/completions``): recorded
  as that template, as every endpoint is recorded without ids (Provider.endpoint); the model priced
  is the one the answer names;
- a prompt its content filter refuses (a 400, ``code: content_filter``) is billed, its prompt's and
  completion's tokens (the filter runs beside the model), which the answer does not report: unpriced
  with why, never the $0 of a refusal.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from ..estimate import Counter
from .base import Observed, as_dict
from .openai import OpenAICompatible

STREAM_OPTIONS_FROM = "2024-09-01"  # the first api-version (2024-09-01-preview) that takes stream_options
_DEPLOYMENT = re.compile(r"/openai/deployments/[^/]+/")
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
FILTERED_PROMPT = ("Azure bills a prompt its content filter refused (400 content_filter), the prompt's and the "
                   "completion's tokens, which its answer does not report (docs/coverage.md)")


class Azure(OpenAICompatible):
    def __init__(self, counter: Counter | None = None):
        super().__init__("azure", "/azure", None, counter, accepts_stream_options=True,
                         hosts=("*.openai.azure.com", "*.cognitiveservices.azure.com"))

    def injects_usage(self, path: str, query: str = "") -> bool:
        if not super().injects_usage(path, query):
            return False
        if path.startswith("/openai/v1/"):
            return True
        version = (parse_qs(query).get("api-version") or [""])[0][:10]
        return _VERSION.fullmatch(version) is not None and version >= STREAM_OPTIONS_FROM

    def parse_body(self, path: str, body) -> Observed:
        if isinstance(body, dict) and as_dict(body.get("error")).get("code") == "content_filter":
            return Observed(unknown_usage=FILTERED_PROMPT)
        return super().parse_body(path, body)

    def endpoint(self, path: str) -> str:
        return _DEPLOYMENT.sub("/openai/deployments/{deployment}/", super().endpoint(path), count=1)
