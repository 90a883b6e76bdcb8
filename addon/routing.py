"""Which provider a request is for, decided once, before anything else reads its path.

1. **The path is made canonical** (``canonical``): escapes of unreserved characters decoded,
   empty and dot segments removed, no trailing slash. ``/v1/%63hat/completions``,
   ``/v1//chat/completions`` and ``/v1/chat/completions/`` are all ``/v1/chat/completions``, and
   that is the path forwarded, so what we meter, limit and budget is what the upstream serves.
   A path a front end might still read as another (an encoded ``/``, ``\\``, ``?`` or ``#``;
   ``;``, ``\\``, spaces, controls, non-ASCII, a segment ending in ``.``) is refused.
2. **The credentials name the owner** (``owner``). Anthropic's signature (``anthropic-version``,
   ``x-api-key``, an ``sk-ant-`` key in any header) and Gemini's (``x-goog-api-key``, a ``key``
   query parameter, an ``AIza`` key) send the request to that provider, whatever the path; a path
   that provider does not serve is answered with a 404 naming the base URL to set, and nothing is
   forwarded. A Google OAuth access token (``ya29.``) is Vertex AI's: it goes only under
   ``/vertex``, and Vertex is sent no other credential. Two providers' credentials together (an
   Anthropic key beside a Google key; an OpenAI-style key or Azure's ``api-key`` beside Anthropic's
   or Gemini's) go nowhere. So no provider's key reaches another.
3. **Then the path**: an explicit prefix (``/gemini/...``), Anthropic's own paths, else OpenAI.
"""

from __future__ import annotations

import base64
import re
from typing import NamedTuple
from urllib.parse import quote, unquote

from mitmproxy.http import Headers

from .core import keys as keygen
from .providers import Provider, vertex

ANTHROPIC, GOOGLE, VERTEX, AZURE = "anthropic", "google", "vertex", "azure"
MIXED = "mixed"  # a Google OAuth token beside another provider's key: it could only go to one of them
# Anthropic's API, as its SDKs call it. Its credentials go nowhere else, and only here.
_ANTHROPIC_EXACT = ("/v1/messages", "/v1/messages/count_tokens", "/v1/complete")
_ANTHROPIC_TREES = ("/v1/messages/batches", "/v1/models", "/v1/files", "/v1/organizations", "/v1/skills")
_ANTHROPIC_ROOTS = ("messages", "models", "complete", "files", "organizations", "skills")
_GEMINI_ROOTS = ("/v1beta/", "/v1alpha/", "/upload/", "/v1/models/", "/v1/tunedModels", "/v1/operations",
                 "/v1/cachedContents", "/v1/files")
# Escapes that cannot be decoded without changing where a segment or the path ends: '/', '\\',
# '?', '#'. An upstream's front end that decodes them anyway would serve another path than we meter.
_ENCODED_SEPARATOR = re.compile(r"%(?:2[fF]|5[cC]|3[fF]|23)")
_KEPT_ESCAPE = re.compile(r"(%25)")  # a literal '%' stays escaped
# What no provider's API path holds, and what front ends drop or rewrite (path parameters after
# ';', '\\' for '/', trailing dots and spaces, NUL and other controls, Unicode folding): forwarded,
# /v1/chat/completions;x could be served as the chat API and metered as an unknown path.
_ODD = re.compile(r"[^\x21-\x7e]|[;\\]|\.(?:/|$)")
_SAFE = "/:@!$&'()*+,;=-._~%"


class Misrouted(Exception):
    """The request cannot go anywhere safely; answer it in ``provider``'s error shape."""

    def __init__(self, provider: Provider, status: int, code: str, message: str):
        super().__init__(message)
        self.provider, self.status, self.code, self.message = provider, status, code, message


class Route(NamedTuple):
    provider: Provider
    path: str  # canonical, as the provider knows it (an explicit prefix removed)


def canonical(path: str) -> str | None:
    """The canonical form of a request path (no query), or None when it has none."""
    if "%" not in path and "//" not in path and "/." not in path and (len(path) < 2 or path[-1] != "/"):
        return None if _ODD.search(path) else path  # the common case: a few tests and one search
    if _ENCODED_SEPARATOR.search(path):
        return None
    pieces = _KEPT_ESCAPE.split(path)
    try:
        decoded = "".join(piece if n % 2 else unquote(piece, errors="strict") for n, piece in enumerate(pieces))
    except UnicodeDecodeError:
        return None
    segments: list[str] = []
    for segment in decoded.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                return None
            segments.pop()
            continue
        segments.append(segment)
    clean = "/" + "/".join(segments)
    return None if _ODD.search(clean) else quote(clean, safe=_SAFE)


_SIGNATURE_HEADERS = {b"anthropic-version": ANTHROPIC, b"x-api-key": ANTHROPIC, b"x-goog-api-key": GOOGLE}
# An Anthropic or Google key as a token of its own, in any header or query value: a client may put
# it anywhere (after many spaces, in Azure's api-key header, in a Basic credential), and wherever
# it is, it is that provider's. Google's keys are "AIza" and 35 more characters; a Google OAuth
# access token ("ya29." and more) is Vertex AI's (its SDKs send one as a bearer token).
_FOREIGN_KEY = re.compile(rb"(?:^|[\s:=,;\"'])(?:(sk-ant-)|(ya29\.)|AIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-]))")
# The credentials Vertex takes: a Google access token, or a self-signed service-account JWT.
_VERTEX_BEARER = re.compile(rb"\s*bearer\s+(?:ya29\.[0-9A-Za-z_\-.]+|"
                            rb"eyJ[0-9A-Za-z_\-]*\.[0-9A-Za-z_\-]+\.[0-9A-Za-z_\-]+)\s*", re.IGNORECASE)
_OTHER_KEY_HEADERS = (b"api-key", b"x-api-key", b"x-goog-api-key")  # Azure's, Anthropic's, Gemini's
_BASIC = re.compile(rb"\s*basic\s+([0-9A-Za-z+/=_\-]+)\s*$", re.IGNORECASE)
_AUTHORIZATION = (b"authorization", b"proxy-authorization")


def owner(headers: Headers, query: str) -> str | None:
    """The provider whose credentials the request carries, when they are unmistakable; MIXED for a
    Google OAuth token beside another provider's key.

    One pass over the raw fields: a Headers lookup costs microseconds, and this runs on every call."""
    kinds: set[str | None] = set()
    for name, value in headers.fields:
        lowered = name.lower()
        kind = _key_in(value)
        if kind is None and lowered in _AUTHORIZATION:
            kind = _basic_key(value)
        kinds.update((kind, _SIGNATURE_HEADERS.get(lowered)))  # a ya29 token in x-goog-api-key is still one
    if query:
        kinds.add(_query_owner(query))
    return _one_owner(kinds)


def _one_owner(kinds: set[str | None]) -> str | None:
    """The one provider the credentials are for; MIXED for two providers' (Anthropic's key beside
    Google's, a Google OAuth token beside any other): sent to one, the other's would go along."""
    kinds.discard(None)
    if len(kinds) > 1 or MIXED in kinds:
        return MIXED
    return next(iter(kinds), None)


def _key_in(value: bytes) -> str | None:
    if b"sk-ant-" not in value and b"AIza" not in value and b"ya29." not in value:
        return None
    return _one_owner({ANTHROPIC if found.group(1) else VERTEX if found.group(2) else GOOGLE
                       for found in _FOREIGN_KEY.finditer(value)})


def _basic_key(value: bytes) -> str | None:
    decoded = _basic_decoded(value)
    return _key_in(decoded) if decoded else None


def _basic_decoded(value: bytes) -> bytes | None:
    """The credential a Basic authorization value encodes, if it is one."""
    basic = _BASIC.match(value)
    if basic is None:
        return None
    try:
        return base64.b64decode(basic.group(1) + b"==", altchars=b"-_")
    except ValueError:
        return None


def _query_owner(query: str) -> str | None:
    """Google's ``key`` parameter however it is written (``KEY``, ``k%65y``), or a key as a value."""
    kinds: set[str | None] = set()
    for param in query.split("&"):
        name, _, value = param.partition("=")
        kind = _key_in(unquote(value).encode("utf-8", "surrogateescape"))
        if kind is None and unquote(name).strip().lower() == "key":
            kind = GOOGLE
        kinds.add(kind)
    return _one_owner(kinds)


def route(providers: list[Provider], path: str, headers: Headers, query: str = "") -> Route:
    """The provider and canonical path for a request; raises Misrouted when there is none."""
    fallback = providers[-1]
    clean = _canonical_or_refuse(fallback, path)
    credentials = owner(headers, query)
    if credentials == MIXED:
        raise Misrouted(fallback, 400, "aispendtrack_mixed_credentials",
                        "AiSpendTrack did not forward this call: it carries the credentials of two providers "
                        "(an Anthropic key, a Google API key or OAuth access token), and a credential is never "
                        "sent to another provider. Send only the one the provider takes. Nothing was forwarded.")
    provider, rest = _by_prefix(providers, clean)
    prefix = provider.prefix if provider is not None else None
    if provider is not None:
        # Vertex's express mode takes a Google API key, as Google's hosts do.
        on_key = provider.name == VERTEX and credentials == GOOGLE and vertex.express(rest)
        if credentials is not None and credentials != provider.name and not on_key:
            raise _foreign(_named(providers, credentials), provider.prefix or "/")
        if provider.name == VERTEX:
            _refuse_other_credentials(provider, headers, api_key=on_key)
    elif credentials == ANTHROPIC:
        provider, rest = _named(providers, ANTHROPIC), clean
    elif credentials == GOOGLE:
        provider, rest = _named(providers, GOOGLE), clean
        if not rest.startswith(_GEMINI_ROOTS):
            raise _foreign(provider, rest)
    elif credentials == VERTEX:
        raise _foreign(_named(providers, VERTEX), clean)  # Vertex is always named by its prefix
    else:
        provider = next((p for p in providers[:-1] if p.paths and _under(clean, p.paths)), fallback)
        rest = clean
        if provider.name == ANTHROPIC and "authorization" in headers:
            # Anthropic's SDKs always send anthropic-version; this bearer token is someone else's.
            raise _foreign(fallback, clean)
    if credentials is None and provider.name not in (AZURE, VERTEX) and _azure_key(headers):
        # Azure OpenAI's header, which no other provider takes: an AzureOpenAI client whose endpoint
        # lacks /azure (its /openai/deployments/... paths then read as OpenAI's).
        raise _foreign(_named(providers, AZURE), prefix or clean)
    if provider.name in (ANTHROPIC, GOOGLE):
        _refuse_keys_of_others(provider, headers, query)
    if provider.name == ANTHROPIC:
        rest = _anthropic_path(provider, rest)
    _refuse_wrong_case(provider, rest)
    return Route(provider, rest)


def route_host(provider: Provider, path: str, headers: Headers, query: str = "") -> Route:
    """The forward mode's route: the provider owns the host the client called (addon/hosts.py).

    The path is checked as in the reverse mode. A key that is unmistakably another provider's (an
    ``sk-ant-`` key, a Google ``AIza`` key) is refused: an upstream set for this provider
    (``--upstream``) must never receive it. Signature headers alone decide nothing here, since the
    Anthropic SDKs send ``anthropic-version`` to Bedrock and Vertex too."""
    clean = provider.escaped_path(path) or _canonical_or_refuse(provider, path)
    keys = {_key_in(value) or _basic_key(value) for _, value in headers.fields}
    keys.add(_query_owner(query))
    for kind in keys:
        if kind is not None and provider.name not in _KEY_OWNERS[kind]:
            what = "keys of two providers" if kind == MIXED else f"a key for {kind}"
            raise Misrouted(provider, 403, "aispendtrack_foreign_key",
                            f"AiSpendTrack did not forward this call: it carries {what}, but is addressed to "
                            f"{provider.name}'s host, and a key is never sent to another provider's upstream.")
    _refuse_wrong_case(provider, clean)
    return Route(provider, clean)


# Who may receive a key found in a request: Google's API keys also serve Vertex AI (express mode),
# and Google's OAuth tokens the Gemini API; a Google token beside another provider's key goes nowhere.
_KEY_OWNERS = {ANTHROPIC: ("anthropic",), GOOGLE: ("google", "vertex"), VERTEX: ("vertex", "google"), MIXED: ()}


def _canonical_or_refuse(provider: Provider, path: str) -> str:
    clean = canonical(path)
    if clean is None:
        raise Misrouted(provider, 400, "aispendtrack_bad_path",
                        f"AiSpendTrack cannot forward {path[:200]!r}: the path climbs above the root, or has a "
                        f"character no API path has (';', '\\', a space, a control or non-ASCII character, an "
                        f"encoded '/', '\\', '?' or '#', a segment ending in '.'). Call the provider's documented "
                        f"path. Nothing was forwarded.")
    return clean


def _named(providers: list[Provider], name: str) -> Provider:
    return next(p for p in providers if p.name == name)


def _by_prefix(providers: list[Provider], path: str) -> tuple[Provider | None, str]:
    for provider in providers:
        prefix = provider.prefix
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            return provider, path[len(prefix):] or "/"
    return None, path


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def _anthropic_path(provider: Provider, path: str) -> str:
    """Anthropic's path for what a client meant: the AI SDK appends ``/messages`` to its base URL,
    and a base URL that already ends in ``/v1`` doubles it. Anything else is refused."""
    if path.startswith("/v1/v1/"):
        path = path[3:]
    elif path.split("/", 2)[1] in _ANTHROPIC_ROOTS:
        path = "/v1" + path
    if path in _ANTHROPIC_EXACT or _under(path, _ANTHROPIC_TREES):
        return path
    raise _foreign(provider, path)


def _azure_key(headers: Headers) -> bool:
    """An Azure key in Azure's header; our own key there is refused as such by the gate."""
    return "api-key" in headers and keygen.PREFIX not in headers["api-key"]


def _foreign(provider: Provider, path: str) -> Misrouted:
    if provider.name == ANTHROPIC:
        where = ("set the base URL to the proxy's address with no path (Anthropic SDK: "
                 "Anthropic(base_url=\"http://HOST:PORT\")), or to http://HOST:PORT/v1 for the Vercel AI SDK")
    elif provider.name == GOOGLE:
        where = "set the base URL to http://HOST:PORT/gemini (see docs/providers.md)"
    elif provider.name == VERTEX:
        where = ("set the base URL to http://HOST:PORT/vertex (google-genai) or http://HOST:PORT/vertex/v1 "
                 "(AnthropicVertex; see docs/providers.md)")
    elif provider.name == AZURE:
        where = "set the endpoint to http://HOST:PORT/azure (AzureOpenAI(azure_endpoint=\"http://HOST:PORT/azure\"))"
    else:
        where = "OpenAI(base_url=\"http://HOST:PORT/v1\"); other providers take a prefix (see docs/providers.md)"
    return Misrouted(provider, 404, "aispendtrack_wrong_base_url",
                     f"AiSpendTrack did not forward this call: it carries {provider.name} credentials, but "
                     f"{path[:200]} is not one of {provider.name}'s API paths, and a key is never sent to "
                     f"another provider. Check the client's base URL: {where}.")


def _refuse_other_credentials(provider: Provider, headers: Headers, api_key: bool = False) -> None:
    """Vertex takes a Google bearer token (or, in express mode, ``api_key``, a Google API key) and
    nothing else: any other credential (an OpenAI-style key, a Basic credential, Azure's api-key)
    belongs to someone else and is not sent to Google."""
    for name, value in headers.fields:
        lowered = name.lower()
        if api_key and lowered == b"x-goog-api-key" and _key_in(value) == GOOGLE:
            continue
        if lowered in _AUTHORIZATION and not _VERTEX_BEARER.fullmatch(value) or lowered in _OTHER_KEY_HEADERS:
            raise Misrouted(provider, 401, "aispendtrack_not_a_google_token",
                            f"AiSpendTrack did not forward this call: its {name.decode(errors='replace')[:40]} "
                            f"header is not a Google OAuth access token, and Vertex AI is sent nothing else "
                            f"(a key is never sent to another provider). Authenticate with Google credentials "
                            f"(see docs/providers.md). Nothing was forwarded.")


# An OpenAI-style key (OpenAI's, DeepSeek's, ...: "sk-" and more, not Anthropic's "sk-ant-").
_SK_KEY = re.compile(rb"(?:^|[\s:=,;\"'])sk-(?!ant-)[0-9A-Za-z_\-]{16,}")


def _refuse_keys_of_others(provider: Provider, headers: Headers, query: str) -> None:
    """A call carrying Anthropic's or Google's own key (``sk-ant-``, ``AIza``, or any value in
    ``x-api-key`` / ``x-goog-api-key`` / Google's ``key`` parameter) and, in another header, a
    different credential, an OpenAI-style key in Authorization or Azure's api-key: that one is
    another provider's, and is not sent along. The same credential in two headers is one (Azure
    Foundry's Anthropic client sends its key as x-api-key and api-key; Claude Code's key helper as
    X-Api-Key and a bearer token). Without a key of its own, the call's credential is whatever its
    upstream takes (a gateway's token), left alone. Runs on every Anthropic and Gemini call: the
    headers are read again only when one could be another's."""
    others = [(name, _credential(value)) for name, value in headers.fields if _maybe_anothers(name.lower(), value)]
    if not others:
        return
    own = ANTHROPIC if provider.name == ANTHROPIC else GOOGLE
    key_header = b"x-api-key" if own == ANTHROPIC else b"x-goog-api-key"
    owns = {_credential(value) for name, value in headers.fields
            if name.lower() == key_header or own in (_key_in(value), _basic_key(value))}
    if not owns and not (own == GOOGLE and query and _query_owner(query) == GOOGLE):
        return
    for name, credential in others:
        if credential not in owns:
            raise Misrouted(provider, 400, "aispendtrack_foreign_key",
                            f"AiSpendTrack did not forward this call: its {name.decode(errors='replace')[:40]} "
                            f"header holds another provider's key, beside {provider.name}'s credentials, and a "
                            f"key is never sent to another provider. Send only {provider.name}'s. Nothing was "
                            f"forwarded.")


def _maybe_anothers(name: bytes, value: bytes) -> bool:
    """Azure's api-key header (ours there: the gate refuses it as such), or an OpenAI-style key in
    an Authorization header, plain or Basic."""
    if name == b"api-key":
        return keygen.PREFIX.encode() not in value
    return name in _AUTHORIZATION and any(_SK_KEY.search(text) for text in (value, _basic_decoded(value) or b""))


def _credential(value: bytes) -> bytes:
    """A header's credential without its scheme: ``Bearer K``, ``K`` and Basic's ``user:K`` compare."""
    decoded = _basic_decoded(value)
    if decoded is not None:
        return decoded.partition(b":")[2].strip() or decoded.strip()
    scheme, _, rest = value.strip().partition(b" ")
    return rest.strip() if rest and scheme.lower() == b"bearer" else value.strip()


def _refuse_wrong_case(provider: Provider, path: str) -> None:
    lower = path.lower()
    if lower != path and not provider.metered(path) and provider.metered(lower):
        raise Misrouted(provider, 404, "aispendtrack_bad_path",
                        f"AiSpendTrack did not forward {path[:200]}: API paths are case-sensitive; "
                        f"use {lower[:200]}.")
