"""Where each provider's calls go: the upstream base URLs from the proxy's options."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from mitmproxy import exceptions, http

from .hosts import ProviderHosts
from .providers import Provider

Upstream = tuple[str, str, int, str]  # scheme, host, port, base path


def parse(providers: list[Provider], openai: str, anthropic: str,
          overrides: Sequence[str]) -> dict[str, Upstream | None]:
    urls = {p.name: p.default_upstream for p in providers} | {"openai": openai or None, "anthropic": anthropic}
    known = ", ".join(sorted(urls))
    for entry in overrides:
        name, sep, url = entry.partition("=")
        if not sep or name.strip() not in urls:
            raise exceptions.OptionsError(f"aispendtrack_upstreams entries are NAME=URL with NAME one of {known}; "
                                          f"got {entry!r}.")
        urls[name.strip()] = url.strip()
    return {name: _parse_one(url or "", f"the {name} upstream") for name, url in urls.items()}


def redirected(providers: list[Provider], upstreams: dict[str, Upstream | None]) -> set[str]:
    """The providers whose upstream is set elsewhere than their own API (the forward mode sends
    only these away from the host the client called). An upstream that is one of the provider's own
    hosts (an Azure resource, a Bedrock region: what the reverse mode needs) is not elsewhere: a
    forward client calling another resource or region goes there, its key and prompt not to this one."""
    own = ProviderHosts(providers)
    return {p.name for p in providers
            if (target := upstreams.get(p.name)) is not None and own.provider(target[1]) != p.name}


def point_keeping_host(req: http.Request, provider: Provider, upstreams: dict[str, Upstream | None]) -> None:
    """The forward mode's pointing: the connection goes to the upstream, while the Host header
    stays the provider's, as the client signed it (AWS SigV4 covers it)."""
    host_header = req.host_header
    point(req, provider, upstreams)
    req.host_header = host_header


def point(req: http.Request, provider: Provider, upstreams: dict[str, Upstream | None]) -> bool:
    """Point the request at the provider's upstream; False when it has none configured."""
    target = upstreams.get(provider.name) or _own_host(req, provider)
    if target is None:
        return provider.name == "openai"  # OpenAI's default is the reverse-mode target itself
    scheme, host, port, base_path = target
    req.scheme, req.host, req.port = scheme, host, port
    if base_path:
        req.path = base_path + req.path
    return True


def missing(provider: Provider) -> str:
    """Why a call has nowhere to go, and what to do."""
    if type(provider).host_for is not Provider.host_for:  # its host comes from the path
        return (f"AiSpendTrack did not forward this call: its path names no {provider.name} location "
                f"(/v1/projects/PROJECT/locations/LOCATION/...; see docs/providers.md). Nothing was forwarded.")
    return (f"No upstream is configured for {provider.name}. Start the proxy with "
            f"--upstream {provider.name}=https://... (see docs/providers.md).")


def _own_host(req: http.Request, provider: Provider) -> Upstream | None:
    """A provider whose host depends on the path (Vertex: by location), when none is configured."""
    host = provider.host_for(req.path.partition("?")[0])
    return ("https", host, 443, "") if host else None


def _parse_one(value: str, option: str) -> Upstream | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise exceptions.OptionsError(f"{option} must be an http(s) URL such as https://api.openai.com, "
                                      f"got {value!r}.")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")
