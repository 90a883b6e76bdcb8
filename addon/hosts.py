"""Which provider a host name belongs to, for the forward mode (addon/forward.py).

Each provider declares the hosts its API answers on (``Provider.hosts``); the
``aispendtrack_forward_hosts`` setting adds more as ``NAME=HOST`` (a gateway in front of
OpenAI, a private Azure name). A host in neither is not a provider's: its connections are
tunnelled untouched and never recorded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mitmproxy import exceptions

from .providers import Provider

# A DNS name or a pattern of one: letters, digits, '-', '.', and '*' for one or more characters of one label.
_PATTERN = re.compile(r"[a-z0-9*](?:[a-z0-9*.-]{0,251}[a-z0-9*])?")


class ProviderHosts:
    def __init__(self, providers: Sequence[Provider], extra: Sequence[str] = ()) -> None:
        # Provider names, not instances: the proxy replaces its providers when it starts (aispendtrack.py).
        self._exact: dict[str, str] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        names = {p.name for p in providers}
        for provider in providers:
            for host in provider.hosts:
                self._add(host, provider.name)
        for entry in extra:
            name, sep, host = entry.partition("=")
            if not sep or name.strip() not in names:
                raise exceptions.OptionsError(
                    f"aispendtrack_forward_hosts entries are NAME=HOST with NAME one of "
                    f"{', '.join(sorted(names))}; got {entry!r}.")
            self._add(host.strip().lower(), name.strip())

    def _add(self, host: str, provider: str) -> None:
        if not _PATTERN.fullmatch(host):
            raise exceptions.OptionsError(f"{host!r} is not a host name (letters, digits, '-', '.', and '*' for "
                                          f"part of a label).")
        if "*" not in host:
            self._exact.setdefault(host, provider)
            return
        regex = re.escape(host).replace(r"\*", "[^.]+")
        self._patterns.append((re.compile(regex), provider))

    def provider(self, host: str) -> str | None:
        """The name of the provider that owns ``host`` (any case, a trailing dot ignored), or None."""
        host = host.lower().rstrip(".")
        found = self._exact.get(host)
        if found is not None:
            return found
        return next((provider for pattern, provider in self._patterns if pattern.fullmatch(host)), None)
