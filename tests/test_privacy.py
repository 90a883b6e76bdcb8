"""Metadata only: a marker sent in prompts and in provider keys is found nowhere we write."""

from __future__ import annotations

import httpx
import pytest

from .helpers import start_proxy

MARKER = "ZEBRA-7f3a9c-PRIVATE"


@pytest.fixture
def private_proxy(tmp_path, upstream):
    logs = tmp_path / "logs"
    logs.mkdir()
    proxy = start_proxy(tmp_path / "home", upstream.url, logs / "proxy.log")
    yield proxy
    proxy.stop()


def _every_file_under(*roots) -> list:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def test_prompt_and_provider_key_never_reach_disk_or_log(private_proxy, tmp_path):
    proxy = private_proxy
    secret_key = f"sk-{MARKER}-key"
    prompt = [{"role": "user", "content": f"my secret is {MARKER}"}]
    oa = proxy.openai(api_key=secret_key, headers={"x-customer-id": "privacy"})
    oa.chat.completions.create(model="gpt-4o", messages=prompt)
    list(oa.chat.completions.create(model="gpt-4o", messages=prompt, stream=True))  # estimated from the prompt
    oa.responses.create(model="gpt-4o-mini", input=f"secret {MARKER}")
    oa.embeddings.create(model="text-embedding-3-small", input=MARKER)
    an = proxy.anthropic(api_key=secret_key, headers={"x-customer-id": "privacy"})
    an.messages.create(model="claude-sonnet-4-20250514", max_tokens=10, messages=prompt)
    with an.messages.stream(model="claude-sonnet-4-20250514", max_tokens=10, messages=prompt) as stream:
        stream.until_done()
    # Refused calls too: a bad tag and a bad key.
    httpx.post(f"{proxy.url}/v1/chat/completions", json={"messages": prompt},
               headers={"authorization": f"Bearer {secret_key}", "x-aispendtrack-key": proxy.key,
                        "x-feature": f"\x01{MARKER}"})
    httpx.post(f"{proxy.url}/v1/chat/completions", json={"messages": prompt},
               headers={"authorization": f"Bearer {secret_key}", "x-aispendtrack-key": f"ask_{MARKER}"})
    assert len(proxy.rows("privacy", expect=6)) == 6
    proxy.stop()

    files = _every_file_under(proxy.home, proxy.log_path.parent)
    assert any(p.suffix == ".duckdb" for p in files) and proxy.log_path in files
    leaks = [str(p) for p in files if MARKER.encode() in p.read_bytes()]
    assert leaks == []
    assert proxy.key.encode() not in b"".join(p.read_bytes() for p in files)  # our own key: hash only
