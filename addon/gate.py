"""The Gate addon: which provider a call is for, whose key it carries, and where it goes.

Answers the health check; removes our headers (``x-aispendtrack-key``, ``x-customer-id``,
``x-feature``) before anything else; routes the call to its provider (addon/routing.py) and
refuses one that would carry a credential to the wrong provider; checks the key and the tags;
points the request at the provider's upstream. An admitted call is handed on in
``flow.metadata[ADMITTED]``; a refused one gets its answer here, in the provider's error shape.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

from mitmproxy import ctx, exceptions, http

from . import forward, refusals, routing, settings, upstreams
from .core import keys as keygen
from .core.budgets import MAX_TAG_LENGTH, valid_tag
from .guard import AuthGuard
from .providers import Provider
from .refusals import KEY_HEADER
from .state import ADMITTED, Admission, ProxyState

log = logging.getLogger(__name__)

TAG_HEADERS = ("x-customer-id", "x-feature")
HEALTH_PATH = "/aispendtrack/health"
_OUR_HEADERS = {name.encode(): name for name in (KEY_HEADER, *TAG_HEADERS)}
# An AiSpendTrack key as a token of another header's value ("Bearer ask_..."): PREFIX and exactly
# 43 URL-safe characters (core/keys.py), not inside a longer word ("task_...", a Referer's path).
_KEY_PREFIX = keygen.PREFIX.encode()
_KEY_IN_VALUE = re.compile(rb"(?<![A-Za-z0-9_-])" + re.escape(_KEY_PREFIX) + rb"[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
# SigV4's list of the headers a signature covers (Authorization: AWS4-HMAC-SHA256 ..., SignedHeaders=a;b, ...)
_SIGNED_HEADERS = re.compile(rb"SignedHeaders=([^,\s]*)")


class Gate:
    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.upstreams: dict[str, tuple[str, str, int, str] | None] = {}
        self.redirected: set[str] = set()  # providers sent elsewhere than their own host (forward mode)
        self.guard = AuthGuard()
        self.tls_only = False

    def load(self, loader) -> None:
        settings.add_options(loader, "Gate")

    def configure(self, updated: set[str]) -> None:
        if "ssl_insecure" in updated and ctx.options.ssl_insecure:
            raise exceptions.OptionsError("AiSpendTrack never turns off upstream TLS verification (ssl_insecure); "
                                          "trust a private CA with ssl_verify_upstream_trusted_ca instead.")
        settings.check(ctx.options, updated, "Gate")
        if updated & {"aispendtrack_openai_upstream", "aispendtrack_anthropic_upstream", "aispendtrack_upstreams"}:
            self.upstreams = upstreams.parse(self.state.providers, ctx.options.aispendtrack_openai_upstream,
                                             ctx.options.aispendtrack_anthropic_upstream,
                                             ctx.options.aispendtrack_upstreams)
            self.redirected = upstreams.redirected(self.state.providers, self.upstreams)
        if "aispendtrack_tls_only" in updated:
            self.tls_only = ctx.options.aispendtrack_tls_only
        if "aispendtrack_auth_failures_per_minute" in updated:
            self.guard.allowed = ctx.options.aispendtrack_auth_failures_per_minute

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # answered already (ConnectionBounds: over the connection cap)
        req = flow.request
        _frame_body(req)
        path, _, query = req.path.partition("?")
        forwarded: forward.Forwarded | None = flow.metadata.get(forward.FORWARDED)
        if forwarded is None and forward.is_forward(flow):
            return  # another host's request through the forward port: passed on untouched (forward.py)
        if path == HEALTH_PATH and forwarded is None:
            flow.response = http.Response.make(200, b'{"status": "ok"}', {"content-type": "application/json"})
            return
        # Removed here: they never reach the provider. Signed requests (AWS SigV4) come only
        # through the forward port: the reverse mode's Host is ours, so no signature survives it.
        ours, signed = _take_our_headers(req.headers, keep_signed=forwarded is not None)
        routed = self._route(flow, path, query) if forwarded is None else self._route_host(flow, forwarded, path, query)
        if routed is None:
            return
        provider, provider_path, key_in_query = routed
        if KEY_HEADER in signed:
            refusals.refuse(flow, provider, 400, "aispendtrack_key_signed",
                            f"The request's AWS signature covers the {KEY_HEADER} header: removing it would break "
                            f"the signature and keeping it would send your AiSpendTrack key to the provider. Give "
                            f"the key only in HTTPS_PROXY (the forward mode's proxy credential). The call was not "
                            f"forwarded.")
            return
        misplaced = _key_in_other_header(req.headers)
        if misplaced is not None:
            refusals.refuse(flow, provider, 400, "aispendtrack_key_in_provider_header",
                            f"An AiSpendTrack key (ask_...) is in the {misplaced} header, which goes to the "
                            f"provider. Send it only in the {KEY_HEADER} header, and your provider's own key "
                            f"where the provider expects it (e.g. api_key=). The call was not forwarded.")
            return
        key_id = self.state.keyring.lookup(forwarded.key if forwarded else ours.get(KEY_HEADER))
        if key_id is None:
            self._refuse_key(flow, provider, KEY_HEADER in ours, key_in_query)
            return
        tags = {name: ours.get(name) for name in TAG_HEADERS}
        for name, value in tags.items():
            if value is not None and not valid_tag(value):
                refusals.refuse(flow, provider, 400, "aispendtrack_invalid_tag",
                                f"The {name} header must be 1 to {MAX_TAG_LENGTH} printable characters "
                                f"(got {len(value)} characters). The call was not forwarded.")
                return
        if forwarded is not None:
            if provider.name in self.redirected:
                upstreams.point_keeping_host(req, provider, self.upstreams)
        elif not upstreams.point(req, provider, self.upstreams):
            refusals.refuse(flow, provider, 502, "aispendtrack_no_upstream", upstreams.missing(provider))
            return
        flow.metadata[ADMITTED] = Admission(provider, provider_path, key_id, tags["x-customer-id"],
                                            tags["x-feature"])

    def _route(self, flow: http.HTTPFlow, path: str, query: str) -> tuple[Provider, str, bool] | None:
        """(provider, its path, whether our key was in the query), with the request pointed at that
        path; None when the call was refused."""
        key_in_query = False
        if query and _may_hold_our_key(query):
            query, key_in_query = _drop_our_query(query)
        try:
            routed = routing.route(self.state.providers, path, flow.request.headers, query)
        except routing.Misrouted as exc:
            refusals.refuse(flow, exc.provider, exc.status, exc.code, exc.message)
            return None
        if self.tls_only and not flow.client_conn.tls_established:
            refusals.refuse(flow, routed.provider, 400, "aispendtrack_tls_required",
                            "This AiSpendTrack proxy only takes HTTPS: use https:// in your base_url.")
            return None
        if routed.path != path or key_in_query:
            # Forwarded as routed: canonical, without a prefix such as /gemini, and without our key.
            flow.request.path = routed.path + ("?" + query if query else "")
        return routed.provider, routed.path, key_in_query

    def _route_host(self, flow: http.HTTPFlow, forwarded: forward.Forwarded, path: str,
                    query: str) -> tuple[Provider, str, bool] | None:
        """The forward mode's route (by the host the client called). The path goes on as the client
        sent it when it only differs from the canonical one by escapes: signed requests (AWS SigV4)
        sign its exact bytes."""
        key_in_query = False
        if query and _may_hold_our_key(query):
            query, key_in_query = _drop_our_query(query)
        try:
            routed = routing.route_host(forwarded.provider, path, flow.request.headers, query)
        except routing.Misrouted as exc:
            refusals.refuse(flow, exc.provider, exc.status, exc.code, exc.message)
            return None
        if key_in_query or unquote(routed.path) != unquote(path):
            flow.request.path = routed.path + ("?" + query if query else "")
        return routed.provider, routed.path, False

    def _refuse_key(self, flow: http.HTTPFlow, provider: Provider, key_sent: bool, key_in_query: bool) -> None:
        # Only failures are throttled: a valid key is never refused because of a neighbour's.
        address = flow.client_conn.peername[0] if flow.client_conn.peername else ""
        wait = self.guard.wait(address)
        if wait is not None:
            refusals.too_many_bad_keys(flow, provider, address, wait)
            return
        self.guard.failed(address)
        refusals.bad_key(flow, provider, key_sent, key_in_query)


def _frame_body(req: http.Request) -> None:
    """An HTTP/2 or HTTP/3 request may let the end of its stream say where its body ends. mitmproxy
    forwards it to an HTTP/1.1 upstream without a length, so the upstream read its bytes as further
    requests (past the key check, unmetered: request smuggling) or none: the length is set here, on
    every request the proxy passes on (the body is whole by now)."""
    if req.raw_content and not req.http_version.startswith("HTTP/1") and \
            "content-length" not in req.headers and "transfer-encoding" not in req.headers:
        req.headers["content-length"] = str(len(req.raw_content))


def _drop_our_query(query: str) -> tuple[str, bool]:
    """The query without our key, and whether it had one: a key pasted into a URL must never reach
    the provider (nor its logs). It is not accepted either: URLs end up in logs."""
    kept = [param for param in query.split("&") if not _is_our_param(param)]
    return "&".join(kept), len(kept) < query.count("&") + 1


def _may_hold_our_key(query: str) -> bool:
    """A cheap first look, on every call with a query: an escape (``%61sk_``) may hide the key."""
    return keygen.PREFIX in query or "aispendtrack" in query.lower() or \
        "%" in query and keygen.PREFIX in unquote(query)


# One of our keys anywhere in a value (``note=key:ask_...``): "ask_" and token_urlsafe(32)'s 43 characters.
_OUR_KEY = re.compile(rf"(?<![0-9A-Za-z_-]){keygen.PREFIX}[0-9A-Za-z_-]{{43}}(?![0-9A-Za-z_-])")


def _is_our_param(param: str) -> bool:
    # Split before unquoting: an escaped "=" (a%3Db=ask_...) must not move where the value starts.
    name, _, value = param.partition("=")
    return unquote(name).lower() == KEY_HEADER or unquote(value).startswith(keygen.PREFIX) or \
        _OUR_KEY.search(unquote(param)) is not None


def _take_our_headers(headers: http.Headers, keep_signed: bool) -> tuple[dict[str, str], frozenset[str]]:
    """Remove our headers and return their values (the first, if one was sent twice); given
    ``keep_signed``, also the names of those an AWS SigV4 signature covers: those are read but left
    in place, as removing one would make the provider refuse the signature (a Bedrock client adding
    x-customer-id in botocore's before-sign hook). The caller refuses a signed key header.

    One pass over the raw fields: Headers.get and .pop cost several microseconds each, and this
    runs on every request."""
    taken: dict[str, str] = {}
    kept = []
    for field in headers.fields:
        name = _OUR_HEADERS.get(field[0].lower())
        if name is None:
            kept.append(field)
        elif name not in taken:
            taken[name] = field[1].decode("utf-8", "surrogateescape")
    if not taken:
        return taken, frozenset()
    signed = set()
    if keep_signed:
        authorization = next((v for n, v in headers.fields if n.lower() == b"authorization"), b"")
        signed = _signed_headers(authorization) & _OUR_HEADERS.keys()
    if signed:  # those stay where they are: a signature covers the order of repeated values too
        kept = [f for f in headers.fields if _OUR_HEADERS.get(f[0].lower()) is None or f[0].lower() in signed]
    headers.fields = tuple(kept)
    return taken, frozenset(_OUR_HEADERS[name] for name in signed)


def _signed_headers(authorization: bytes) -> set[bytes]:
    """The header names an AWS SigV4 Authorization value signs (lower case); empty for any other."""
    if not authorization.startswith(b"AWS4-"):
        return set()
    found = _SIGNED_HEADERS.search(authorization)
    return set(found.group(1).lower().split(b";")) if found else set()


def _key_in_other_header(headers: http.Headers) -> str | None:
    """The name of a header (ours removed) whose value holds an AiSpendTrack key: a client given
    its key as api_key= would send it to the provider. One search over all values first (~1 µs
    for an SDK's headers); the fields one by one only when it finds the prefix."""
    fields = headers.fields
    if _KEY_PREFIX not in b"\n".join([value for _, value in fields]):
        return None
    for name, value in fields:
        if _KEY_IN_VALUE.search(value):
            return name.decode("latin-1")
    return None
