"""The Forward addon: the forward-proxy mode, for clients that cannot change their base URL.

``aispendtrack proxy --forward-port 8081`` adds mitmproxy's regular mode beside the reverse mode
(with mitmdump: ``--mode reverse:https://api.openai.com --mode regular@8081
--set confdir=~/.aispendtrack/ca``). A client sets ``HTTPS_PROXY=http://aispendtrack:ask_KEY@HOST:8081`` and
trusts the proxy's CA (``aispendtrack ca``). Then:

- every CONNECT (and every plain-HTTP proxy request) must carry an active AiSpendTrack key as
  its proxy credential (user name or password); otherwise 407, and nothing is forwarded;
- a connection to a provider's host (``Provider.hosts``, addon/hosts.py) is intercepted and its
  calls go through the Gate, Quotas and the meter as in the reverse mode, routed by host;
- a connection to any other host is tunnelled untouched: no TLS interception, no record; but not
  to this host's loopback or link-local addresses (the proxy's own metrics and web ports, a cloud's
  metadata service) unless ``aispendtrack_forward_local`` allows them: the name is resolved once,
  refused with 403 if any of its addresses is one, and the connection made to the address checked
  (``Forward._pinned``).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass

from mitmproxy import connection, ctx, http, tls
from mitmproxy.proxy.mode_specs import RegularMode

from . import settings
from .core import keys
from .guard import AuthGuard
from .hosts import ProviderHosts
from .providers import Provider
from .refusals import KEY_HEADER
from .state import ProxyState

log = logging.getLogger(__name__)

FORWARDED = "aispendtrack.forwarded"  # flow.metadata key of a Forwarded: a provider's call, via the forward port
PASSING = "aispendtrack.passing"      # flow.metadata key: a forward-port request to another host, not ours to meter
_PROXY_AUTH = "proxy-authorization"
_HOW = ("Set HTTPS_PROXY=http://aispendtrack:ask_KEY@HOST:PORT (your AiSpendTrack key as the proxy "
        "password; `aispendtrack keys create --name NAME` makes one).")


@dataclass(frozen=True)
class Forwarded:
    key: str
    provider: Provider


def is_forward(flow_or_client) -> bool:
    """Whether a flow (or client connection) came in on the forward port."""
    client = getattr(flow_or_client, "client_conn", flow_or_client)
    return isinstance(client.proxy_mode, RegularMode)


def proxy_key(value: str | None) -> str | None:
    """The AiSpendTrack key in a Proxy-Authorization value (Basic, as the user name or the password)."""
    scheme, _, token = (value or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except ValueError:  # not base64 (binascii.Error), not ASCII text, not UTF-8 once decoded
        return None
    return next((part for part in (user, password) if part.startswith(keys.PREFIX)), user or password or None)


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host" (RFC 1122): Linux connects 0.0.0.0 to itself
_METADATA_V6 = ipaddress.ip_address("fd00:ec2::254")  # AWS's metadata service over IPv6: a ULA, not link-local


def is_local(address: str) -> bool:
    """Whether an IP address reaches this host or its link only: loopback, unspecified, link-local."""
    ip = ipaddress.ip_address(address.partition("%")[0])  # an IPv6 scope (fe80::1%eth0) is no part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip == _METADATA_V6
            or (ip.version == 4 and ip in _THIS_NETWORK))


class Forward:
    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.hosts = ProviderHosts(state.providers)
        self.guard = AuthGuard()
        # The key each CONNECT tunnel was opened with: the requests inside it carry no credential.
        self._keys: weakref.WeakKeyDictionary[connection.Client, str] = weakref.WeakKeyDictionary()

    def load(self, loader) -> None:
        settings.add_options(loader, "Forward")

    def configure(self, updated: set[str]) -> None:
        if "aispendtrack_forward_hosts" in updated:
            self.hosts = ProviderHosts(self.state.providers, ctx.options.aispendtrack_forward_hosts)
        if "aispendtrack_auth_failures_per_minute" in updated:
            self.guard.allowed = ctx.options.aispendtrack_auth_failures_per_minute

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if not is_forward(flow):
            return None
        key = self._admit(flow, flow.request.headers.get(_PROXY_AUTH))
        if key is None:
            return None
        self._keys[flow.client_conn] = key
        return self._reachable(flow)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Only a provider's host is intercepted; any other keeps its own certificate and bytes."""
        client = data.context.client
        if not is_forward(client) or data.context.server.address is None:
            return
        if self.hosts.provider(data.context.server.address[0]) is None:
            data.ignore_connection = True

    def tls_failed_client(self, data: tls.TlsData) -> None:
        if not is_forward(data.context.client):
            return
        address = data.context.server.address
        host = address[0] if address else "?"
        log.warning("a client refused the AiSpendTrack CA for %s (%s). Make it trust the proxy's CA: run "
                    "`aispendtrack ca` and set the variables it prints (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, "
                    "NODE_EXTRA_CA_CERTS, AWS_CA_BUNDLE); a client that pins certificates cannot use the "
                    "forward mode: use the base URL instead (docs/forward-proxy.md).", host,
                    (data.conn.error or "TLS handshake failed")[:120])

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if not is_forward(flow) or flow.response is not None:
            return None
        key = self._keys.get(flow.client_conn)
        plain = key is None  # a plain-HTTP request to the proxy: its credential comes with each request
        if key is None:
            key = self._admit(flow, flow.request.headers.get(_PROXY_AUTH))
            if key is None:
                return None
        flow.request.headers.pop(_PROXY_AUTH, None)  # ours: it never travels on
        name = self.hosts.provider(flow.request.host)
        if name is None:
            flow.metadata[PASSING] = True
            # Not metered, but our key goes no further than the proxy whatever the host (a plain-HTTP
            # request's headers are ours to read; a tunnel to another host is not opened).
            flow.request.headers.pop(KEY_HEADER, None)
            return self._reachable(flow) if plain else None  # a tunnel's was checked at its CONNECT
        provider = next(p for p in self.state.providers if p.name == name)
        flow.metadata[FORWARDED] = Forwarded(key, provider)
        return None

    def _reachable(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """For a host not intercepted, unless local addresses are allowed: its address checked and
        kept (``_pinned``)."""
        if ctx.options.aispendtrack_forward_local or self.hosts.provider(flow.request.host) is not None:
            return None
        return self._pinned(flow)

    async def _pinned(self, flow: http.HTTPFlow) -> None:
        """Refuse (403) a host one of whose addresses is local (``is_local``): a key holder would reach
        the proxy's own metrics and web ports, or a cloud's metadata service, through the proxy. Else
        connect to the first address as checked, not to the name resolved again (a name whose answer
        changed in between would reach them); mitmproxy would have tried the others after it. Its Host
        header and request line stay as sent."""
        host, port = flow.request.host, flow.request.port
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [str(info[4][0]) for info in found]
            local = next((a for a in addresses if is_local(a)), None)
        except Exception as exc:  # no such name, or none now: mitmproxy would look it up again (a second
            # answer, which may be local), and it opens a CONNECT whose hook raised: refused here
            addresses, local = [], None
            why = getattr(exc, "strerror", None) or type(exc).__name__
        else:
            why = "no address"
        if local is not None:
            self._refuse(flow, 403, f"{host} is {local}, an address of this host (loopback or link-local), which "
                         "the forward port does not reach: leave the host out of the proxy (NO_PROXY), or start "
                         "the proxy with --forward-local")
            log.info("refused a forward-proxy request to %s (%s): a local address", host, local)
        elif not addresses:
            self._refuse(flow, 502, f"cannot resolve {host} ({why})")
        elif flow.request.scheme == "http" or flow.request.method == "CONNECT":
            # (not an absolute-form https:// request: mitmproxy would send the address as its SNI)
            authority, host_header = flow.request.authority, flow.request.host_header
            flow.request.host = addresses[0]
            flow.request.authority, flow.request.host_header = authority, host_header

    @staticmethod
    def _refuse(flow: http.HTTPFlow, status: int, why: str) -> None:
        flow.response = http.Response.make(status, f"AiSpendTrack forward proxy: {why}. Nothing was forwarded.\n",
                                           {"content-type": "text/plain"})

    def _admit(self, flow: http.HTTPFlow, credential: str | None) -> str | None:
        """The key of a valid proxy credential; else a 407 (or a 429 after many wrong ones) and None.
        Whatever goes wrong reading it refuses: mitmproxy lets a CONNECT through when its hook raises."""
        try:
            key = proxy_key(credential)
            if key is not None and self.state.keyring.lookup(key) is not None:
                return key
        except Exception:
            log.exception("could not read a forward-proxy credential; refused")
            key = None
        address = flow.client_conn.peername[0] if flow.client_conn.peername else ""
        wait = self.guard.wait(address)
        if wait is not None:
            flow.response = http.Response.make(
                429, f"AiSpendTrack: too many wrong proxy credentials from {address}; refused for {wait} s.\n",
                {"content-type": "text/plain", "retry-after": str(wait)})
            return None
        self.guard.failed(address)
        why = "no AiSpendTrack key" if key is None else "not an active AiSpendTrack key (unknown or revoked)"
        flow.response = http.Response.make(
            407, f"AiSpendTrack forward proxy: the proxy credential is {why}. {_HOW} Nothing was forwarded.\n",
            {"content-type": "text/plain", "proxy-authenticate": 'Basic realm="AiSpendTrack"'})
        log.info("refused a forward-proxy request to %s: %s", flow.request.host, why)
        return None
