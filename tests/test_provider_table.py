"""What docs/providers.md and docs/forward-proxy.md tell a user to configure is what the proxy runs:
each provider's prefix, default upstream and recorded name, the providers the proxy asks for
stream usage, and the hosts the forward mode intercepts (``addon/providers/__init__.py``'s table)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from addon.providers import all_providers

DOCS = Path(__file__).parent.parent / "docs"
COUNTER = object()  # stands in for the tokenizer every provider estimates with


@pytest.fixture
def providers() -> dict:
    return {provider.name: provider for provider in all_providers(COUNTER)}  # type: ignore[arg-type]


def _table() -> dict[str, tuple[str, str | None, str | None]]:
    """Recorded name -> (the provider column, its prefix, its default upstream), from providers.md."""
    text = (DOCS / "providers.md").read_text()
    start = text.index("| provider | prefix | default upstream |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("| "):
            break
        provider, prefix, upstream, _, recorded = (cell.strip() for cell in line.strip("|").split("|")[:5])
        prefixes = re.findall(r"`(/[a-z]+)`", prefix)
        url = re.fullmatch(r"`(https://[^`]+)`", upstream)
        rows[recorded.strip("`")] = (provider, prefixes[-1] if prefixes else None, url.group(1) if url else None)
    return rows


def test_each_providers_prefix_default_upstream_and_name_are_as_the_docs_say(providers):
    table = _table()
    assert sorted(table) == sorted(providers)
    assert {name: (p.prefix, p.default_upstream) for name, p in providers.items()} == \
        {name: (prefix, upstream) for name, (_, prefix, upstream) in table.items()}
    # Each estimates a call without usage (a cut stream) with the tokenizer it was given.
    assert all(p.counter is COUNTER for p in providers.values())


def test_the_providers_asked_for_stream_usage_are_those_the_docs_name(providers):
    text = (DOCS / "providers.md").read_text()
    named = re.search(r"`stream_options\.include_usage` \(([^)]+)\) the proxy adds it", text)
    assert named is not None
    by_column = {column: name for name, (column, _, _) in _table().items()}
    documented = {by_column[column.strip()] for column in named.group(1).split(",")}
    asked = {name for name, p in providers.items() if p.injects_usage("/v1/chat/completions", "api-version=2024-10-21")}
    assert documented == asked and "openai" in asked


def test_the_forward_mode_intercepts_the_hosts_the_docs_list_and_no_other(providers):
    text = (DOCS / "forward-proxy.md").read_text()
    bullet = re.search(r"\*\*Only the providers' hosts are intercepted\*\*:(.*?)\(each provider module's `hosts`\)",
                       text, re.S)
    assert bullet is not None
    documented = set(re.findall(r"`([^`]+)`", bullet.group(1)))
    hosts = {host for p in providers.values() for host in p.hosts}
    assert documented == hosts
