"""Batch APIs through the proxy with the official SDKs: OpenAI's Batch API and Anthropic's Message
Batches, against a strict fake of each (tests/batch_api.py) on 127.0.0.1.

A batch is billed at half the model's token prices, once, to the key, customer and feature of the
call that created it, whoever polls it or downloads its results, and however often.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import pytest

from .batch_api import BatchApi, anthropic_usage, completed_openai_batch, openai_usage
from .helpers import run_cli, start_proxy
from .upstream import FakeProvider

M = Decimal(1_000_000)
MINI = "gpt-4o-mini"  # list prices per million: input 0.15, output 0.60 (batch: half)
SONNET = "claude-sonnet-4-20250514"  # 3 / 15 per million, 6 / 22.50 past 200K input tokens in one request


def tags(customer: str, feature: str = "polling") -> dict[str, str]:
    return {"x-customer-id": customer, "x-feature": feature}


@pytest.fixture(scope="module")
def fake(upstream):
    """The module's fake provider (conftest.py), answering the batch APIs too; ``proxy`` is in front of it."""
    upstream.batches = BatchApi()
    return upstream


def usage_rows(proxy, customers: tuple[str, ...], calls: int, expect: int = 0, timeout: float = 15) -> list[dict]:
    """The rows of batches' usage tagged with one of ``customers``, once their ``calls`` calls of the
    batch APIs (billing nothing themselves) and ``expect`` usage rows are stored: a row that should
    not exist has had every chance to appear."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in proxy.calls(100_000) if r["customer_id"] in customers]
        usage = [r for r in rows if r["usage_source"] != "none"]
        if len(rows) - len(usage) >= calls and len(usage) >= expect or time.monotonic() > deadline:
            return usage
        time.sleep(0.1)


def messages(ids, max_tokens: int = 10) -> list[dict]:
    """Message Batches requests, one per custom id."""
    return [{"custom_id": cid, "params": {"model": SONNET, "max_tokens": max_tokens,
                                          "messages": [{"role": "user", "content": "hi"}]}} for cid in ids]


def ended_batch(client, fake, ids, max_tokens: int = 10) -> str:
    """A Message Batch created and polled through the proxy until it ended; its id."""
    batch = client.messages.batches.create(requests=messages(ids, max_tokens))
    for _ in range(fake.batches.polls_until_done):
        client.messages.batches.retrieve(batch.id)
    return batch.id


def cost(row: dict) -> Decimal:
    return Decimal(str(row["cost_usd"]))


def test_openai_batch_is_priced_at_half_once_for_the_call_that_created_it(proxy, fake):
    creator = proxy.openai(headers=tags("acme-openai", "nightly-summaries"))
    poller = proxy.openai(headers=tags("ops-openai"))
    customers = ("acme-openai", "ops-openai")
    batch = completed_openai_batch(creator, poller, MINI, 5)
    assert batch.output_file_id
    content = poller.files.content(batch.output_file_id).content
    lines = [json.loads(line) for line in content.splitlines()]
    assert [line["custom_id"] for line in lines] == [f"r{n}" for n in range(5)]  # the client's bytes, intact

    rows = usage_rows(proxy, customers, calls=5)  # upload, create, 2 retrieves, download
    assert len(rows) == 1
    row = rows[0]
    prompt = sum(openai_usage(n)["prompt_tokens"] for n in range(5))  # 5,010
    completion = sum(openai_usage(n)["completion_tokens"] for n in range(5))  # 1,010
    assert (row["input_tokens"], row["output_tokens"]) == (prompt, completion) == (5010, 1010)
    # Half of 0.15 and 0.60 per million: 5,010 x 0.075 + 1,010 x 0.30, per million.
    assert cost(row) == (Decimal(5010) * Decimal("0.075") + Decimal(1010) * Decimal("0.30")) / M
    assert (row["customer_id"], row["feature"], row["key_id"]) == ("acme-openai", "nightly-summaries", proxy.key_id)
    assert (row["endpoint"], row["model"]) == ("/v1/batches", "gpt-4o-mini-2024-07-18")
    assert (row["service_tier"], row["usage_source"]) == ("batch", "reported")

    # Downloading again, and polling again, adds no usage.
    assert poller.files.content(batch.output_file_id).content == content
    poller.batches.retrieve(batch.id)
    assert fake.batches.results_sent >= 2
    assert len(usage_rows(proxy, customers, calls=7)) == 1


def test_a_batch_that_ran_yesterday_is_dated_and_budgeted_where_it_ran_not_where_it_was_fetched(tmp_path, fake):
    """Each result line says when its request ran: rows per 15 minutes of running, dated then, so a
    report and the provider's books show the usage on the same day, and a daily budget of today does
    not count yesterday's half (a call under it is admitted; counted at the download, it was refused)."""
    # Each pair in one 15-minute bucket (a row each), whatever the hour: today's at this quarter
    # hour's start (a day starts on such an edge), yesterday's 26 hours before.
    today = int(time.time()) // 900 * 900
    yesterday = today - 26 * 3600
    fake.batches.ran_at = [yesterday, yesterday, today, today]
    home = tmp_path / "home"
    # One line costs (1,000 + n) x 0.075 + (200 + n) x 0.30 per million, about $0.000135: today's two
    # stay under $0.0004, all four do not.
    run_cli(home, "budgets", "set", "--scope", "customer:night-owl", "--all-keys", "--daily", "0.0004", "--block")
    proxy = start_proxy(home, fake.url, tmp_path / "proxy.log")
    try:
        client = proxy.openai(headers=tags("night-owl"))
        batch = completed_openai_batch(client, client, MINI, 4)
        client.files.content(batch.output_file_id)
        rows = sorted(usage_rows(proxy, ("night-owl",), calls=5, expect=2), key=lambda r: r["ts"])
        assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(2001, 401), (2005, 405)]
        assert [r["ts"][:19] for r in rows] == [
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) for t in (yesterday, today)]
        assert cost(rows[0]) == (Decimal(2001) * Decimal("0.075") + Decimal(401) * Decimal("0.30")) / M
        client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": "hi"}])  # not refused
    finally:
        fake.batches.ran_at = []
        proxy.stop()


def test_an_openai_batch_of_responses_counts_and_prices_its_file_searches(proxy, fake):
    """Each line's file search is billed on top of its tokens: the results' lines kept tokens and
    web searches alone, so a priced row left out $2.50 per 1,000 searches."""
    client = proxy.openai(headers=tags("acme-searches"))
    batch = completed_openai_batch(client, client, "gpt-4.1", 4, "/v1/responses",
                                   {"input": "what changed?", "tools": [{"type": "file_search",
                                                                         "vector_store_ids": ["vs_1"]}]})
    lines = [json.loads(line) for line in client.files.content(batch.output_file_id).content.splitlines()]
    assert [item["type"] for item in lines[0]["response"]["body"]["output"]] == ["file_search_call", "message"]
    [row] = usage_rows(proxy, ("acme-searches",), calls=5, expect=1)  # upload, create, 2 retrieves, download
    prompt = sum(openai_usage(n)["prompt_tokens"] for n in range(4))  # 4,006
    completion = sum(openai_usage(n)["completion_tokens"] for n in range(4))  # 806
    assert (row["input_tokens"], row["output_tokens"], row["file_search_calls"]) == (prompt, completion, 4)
    # gpt-4.1 at half of $2 and $8 per million, and 4 file searches at $2.50 per 1,000.
    assert cost(row) == (Decimal(prompt) * 1 + Decimal(completion) * 4) / M + 4 * Decimal("2.5") / 1000


def test_anthropic_results_come_through_the_proxy_each_request_priced_alone_once(proxy, fake):
    creator = proxy.anthropic(headers=tags("acme-anthropic", "nightly-summaries"))
    poller = proxy.anthropic(headers=tags("ops-anthropic"))
    customers = ("acme-anthropic", "ops-anthropic")
    # Three prompts of ~100K tokens: together past 200K, each one under it (the standard rate).
    ids = ["long-0", "long-1", "long-2", "short-3", "failed-4"]
    batch = creator.messages.batches.create(requests=messages(ids))
    while (batch := poller.messages.batches.retrieve(batch.id)).processing_status != "ended":
        time.sleep(0.05)
    assert batch.results_url == f"/v1/messages/batches/{batch.id}/results"  # relative: the SDK's base_url
    before = sum(1 for r in fake.received if r.path.endswith("/results"))
    results = list(poller.messages.batches.results(batch.id))
    assert [r.custom_id for r in results] == ids
    assert [r.result.type for r in results] == ["succeeded"] * 4 + ["errored"]
    assert sum(1 for r in fake.received if r.path.endswith("/results")) == before + 1  # through the proxy

    rows = usage_rows(proxy, customers, calls=5)  # create, 2 retrieves, results() (a retrieve, the results)
    assert len(rows) == 1
    row = rows[0]
    usages = [anthropic_usage(n, long_prompt=n < 3) for n in range(4)]
    assert row["input_tokens"] == sum(u["input_tokens"] for u in usages) == 300_506
    assert row["output_tokens"] == sum(u["output_tokens"] for u in usages) == 1206
    # Half of 3 and 15 per million, each request alone (priced as a sum, 300K input would take the
    # long-context rate, 6 / 22.50): 300,503 x 1.50 + 1,206 x 7.50, per million.
    assert cost(row) == (Decimal(300_506) * Decimal("1.5") + Decimal(1206) * Decimal("7.5")) / M
    assert (row["customer_id"], row["feature"], row["model"]) == ("acme-anthropic", "nightly-summaries", SONNET)
    assert (row["endpoint"], row["service_tier"]) == ("/v1/messages/batches", "batch")

    assert len(list(poller.messages.batches.results(batch.id))) == 5
    assert len(usage_rows(proxy, customers, calls=7)) == 1

    # A reprice at the same prices leaves it as stored: priced as one sum it took the long-context
    # rates ($0.459804 -> $0.915086), and a reprice cannot see the requests apart.
    out = run_cli(proxy.home, "reprice", "--customer", "acme-anthropic")
    assert "Left as stored: 1 batch row" in out and "changed." in out
    [after] = usage_rows(proxy, customers, calls=7)
    assert cost(after) == cost(row) and after["previous_cost_usd"] is None


def test_a_batchs_us_only_requests_cost_a_tenth_more_in_a_row_of_their_own(proxy, fake):
    """A batch's requests run in the US alone (inference_geo "us") cost 1.1 times the batch rates of
    Claude Opus 4.6 and later; they were priced with the others, at the global rates."""
    client = proxy.anthropic(headers=tags("acme-geo", "nightly-us"))
    geos = ["us", "global", "us", "us"]  # and a fifth request, which fails
    requests = [{"custom_id": f"r{n}", "params": {"model": "claude-opus-4-6", "max_tokens": 10, "inference_geo": geo,
                                                   "messages": [{"role": "user", "content": "hi"}]}}
                for n, geo in enumerate([*geos, "us"])]
    batch = client.messages.batches.create(requests=requests)
    while (batch := client.messages.batches.retrieve(batch.id)).processing_status != "ended":
        time.sleep(0.05)
    assert len(list(client.messages.batches.results(batch.id))) == 5
    rows = usage_rows(proxy, ("acme-geo",), calls=4, expect=2)
    by_source = {"us" if "US-only" in r["price_source"] else "global": r for r in rows}
    assert len(rows) == 2 and set(by_source) == {"us", "global"}
    for geo, premium in (("us", Decimal("1.1")), ("global", Decimal(1))):
        usages = [anthropic_usage(n, long_prompt=False) for n, g in enumerate(geos) if g == geo]
        inp, out = sum(u["input_tokens"] for u in usages), sum(u["output_tokens"] for u in usages)
        assert (by_source[geo]["input_tokens"], by_source[geo]["output_tokens"]) == (inp, out)
        # Opus 4.6 in a batch: half of 5 and 25 per million.
        assert cost(by_source[geo]) == (inp * Decimal("2.5") + out * Decimal("12.5")) * premium / M


def test_results_come_through_the_proxy_under_a_prefixed_base_url_too(proxy, fake):
    client = anthropic.Anthropic(base_url=f"{proxy.url}/anthropic", api_key="sk-ant-test-key", max_retries=0,
                                 default_headers={"x-aispendtrack-key": proxy.key, **tags("prefixed")})
    batch_id = ended_batch(client, fake, ["short-0", "failed-1"])
    assert [r.custom_id for r in client.messages.batches.results(batch_id)] == ["short-0", "failed-1"]
    [row] = usage_rows(proxy, ("prefixed",), calls=5)
    assert (row["input_tokens"], row["output_tokens"]) == (500, 300)


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_the_batch_object_differs_from_the_providers_only_in_its_results_url(proxy, fake, encoding):
    client = proxy.anthropic()
    batch = client.messages.batches.create(requests=messages(["one", "two"]))
    headers = {"x-aispendtrack-key": proxy.key, "x-api-key": "sk-ant-test-key", "anthropic-version": "2023-06-01",
               "accept-encoding": encoding}
    fake.batches.gzip_objects = True
    try:
        for _ in range(fake.batches.polls_until_done):
            got = httpx.get(f"{proxy.url}/v1/messages/batches/{batch.id}", headers=headers)
    finally:
        fake.batches.gzip_objects = False
    sent = fake.batches.last_object
    absolute = f"{fake.url}/v1/messages/batches/{batch.id}/results".encode()
    assert absolute in sent
    assert got.headers.get("content-encoding", "identity") == encoding
    assert got.content == sent.replace(absolute, f"/v1/messages/batches/{batch.id}/results".encode())
    assert int(got.headers["content-length"]) == got.num_bytes_downloaded  # the length of what was sent


def test_unreadable_result_lines_are_counted_and_logged_and_reach_the_client_unchanged(proxy, fake):
    client = proxy.anthropic(headers=tags("malformed"))
    batch_id = ended_batch(client, fake, [f"short-{n}" for n in range(7)])
    fake.batches.malformed_every = 3  # lines 3 and 6 are cut in half
    try:
        headers = {"x-aispendtrack-key": proxy.key, "x-api-key": "k", "anthropic-version": "2023-06-01",
                   **tags("malformed")}
        got = httpx.get(f"{proxy.url}/v1/messages/batches/{batch_id}/results", headers=headers)
        direct = httpx.get(f"{fake.url}/v1/messages/batches/{batch_id}/results", headers=headers)
    finally:
        fake.batches.malformed_every = 0
    assert got.content == direct.content and got.content.count(b"\n") == 7
    rows = usage_rows(proxy, ("malformed",), calls=4)
    assert len(rows) == 1
    counted = [n for n in range(6) if n not in (2, 5)]  # the 7th request failed: not billed
    assert rows[0]["input_tokens"] == sum(anthropic_usage(n, False)["input_tokens"] for n in counted)
    assert rows[0]["error"] == "2 result lines unreadable, not counted"
    assert f"results of batch {batch_id}: 2 of 7 lines unreadable (the first is line 3)" in proxy.log_path.read_text()


def test_a_download_cut_short_records_nothing_and_the_next_complete_one_records_the_batch(proxy, fake):
    client = proxy.anthropic(headers=tags("cut"))
    batch_id = ended_batch(client, fake, [f"short-{n}" for n in range(50)])
    fake.batches.cut_after_bytes = 4000
    try:
        with pytest.raises(Exception):  # noqa: B017 (the SDK's or httpx's error: either is a failed download)
            list(client.messages.batches.results(batch_id))
    finally:
        fake.batches.cut_after_bytes = 0
    assert usage_rows(proxy, ("cut",), calls=5) == []
    assert len(list(client.messages.batches.results(batch_id))) == 50
    rows = usage_rows(proxy, ("cut",), calls=7)
    assert len(rows) == 1
    assert rows[0]["input_tokens"] == sum(anthropic_usage(n, False)["input_tokens"] for n in range(49))


def test_gdpr_export_lists_a_customers_batches_and_delete_leaves_them_nameless(proxy, fake):
    from .helpers import run_cli

    client = proxy.anthropic(headers=tags("erase-me", "nightly-summaries"))
    batch_id = ended_batch(client, fake, ["short-0", "failed-1"])
    list(client.messages.batches.results(batch_id))
    assert len(usage_rows(proxy, ("erase-me",), calls=5)) == 1
    document = json.loads(run_cli(proxy.home, "gdpr", "export", "--customer", "erase-me"))
    assert [(b["batch_id"], b["feature"]) for b in document["batches"]] == [(batch_id, "nightly-summaries")]
    run_cli(proxy.home, "gdpr", "delete", "--customer", "erase-me", "--yes")
    exported = run_cli(proxy.home, "gdpr", "export", "--customer", "erase-me")
    assert "Nothing is stored about customer erase-me." in exported
    # The batch stays known: downloading its results again records nothing, for anyone.
    list(proxy.anthropic(headers=tags("after-erase")).messages.batches.results(batch_id))
    assert usage_rows(proxy, ("after-erase",), calls=2) == []


def test_a_batch_its_creator_is_erased_while_its_calls_wait_unwritten_never_brings_them_back(tmp_path, fake):
    """The batch's calls were still in the writer's memory when `gdpr delete` ran: their rows were
    dropped as they landed, but the batch was recorded first, with its creator's tags, and the rows
    of its results, downloaded after the erase, took them: the customer back in the calls."""
    home = tmp_path / "home"
    proxy = start_proxy(home, fake.url, tmp_path / "proxy.log", flush_ms=30_000)
    try:
        batch_id = ended_batch(proxy.anthropic(headers=tags("erased-creator")), fake, ["short-0", "failed-1"])
        run_cli(home, "gdpr", "delete", "--customer", "erased-creator", "--yes")
        list(proxy.anthropic(headers=tags("downloader")).messages.batches.results(batch_id))
    finally:
        proxy.stop()  # every row written or spilled
    assert "Nothing is stored about customer erased-creator." in run_cli(home, "gdpr", "export", "--customer",
                                                                          "erased-creator")


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def settled_rss_kb(pid: int, timeout: float = 120) -> int:
    """The proxy's resident memory once it stops growing by itself (it loads tiktoken's encodings,
    ~150 MB, in the background after it starts)."""
    deadline = time.monotonic() + timeout
    samples = [rss_kb(pid)]
    while time.monotonic() < deadline:
        time.sleep(1)
        samples = [*samples[-4:], rss_kb(pid)]
        if len(samples) == 5 and max(samples) - min(samples) < 2048:  # steady for 4 s
            return max(samples)
    raise AssertionError(f"the proxy's memory did not settle in {timeout} s")


def test_a_batchs_usage_spilled_before_it_was_settled_is_settled_and_counted_after_the_restart(tmp_path):
    """A proxy stopped while a batch's usage waited to be settled spills it with its note; read back,
    its time was text, which settling (and counting it against budgets by its date) could not use."""
    from addon import batches
    from addon.core import spill
    from addon.core.store import calls as call_rows
    from addon.core.store import reading
    from addon.writer import Writer

    from .helpers import call_row

    db, spilled = tmp_path / "a.duckdb", tmp_path / "spill"
    ran = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    row = call_row(7, ts=ran, endpoint="/v1/batches", service_tier="batch", customer_id="downloader")
    row[batches.NOTE] = {"results": "file-out-1", "download": "call-1"}
    spilled.mkdir()
    spill.write(spilled / "1-1-1.jsonl", [row])
    counted: list[dict] = []
    writer = Writer(db, spilled, build_row=lambda r: r, on_refresh=lambda con: None,
                    settle=lambda con, rows: batches.settle(con, rows, counted.append))
    writer.load_keys_now()
    # A batch the proxy never saw: its downloader's, counted by the time it ran.
    assert [(r["customer_id"], r["ts"]) for r in counted] == [("downloader", ran)]
    with reading(db) as con:
        [stored] = [r for r in call_rows.newest(con, 10) if r["customer_id"] == "downloader"]
    assert stored["input_tokens"] == 7 and not list(spilled.glob("*.jsonl"))


def test_a_200_mb_results_file_streams_through_in_bounded_memory_every_line_recorded_once(tmp_path):
    with FakeProvider() as fake:
        fake.batches = BatchApi(pad=50_000)
        proxy = start_proxy(tmp_path / "home", fake.url, tmp_path / "proxy.log")
        try:
            client = proxy.anthropic(headers=tags("big"))

            def batch_of(n: int) -> str:
                return ended_batch(client, fake, [f"short-{i}" for i in range(n)], max_tokens=16_000)

            # Baseline: the proxy after a small results file has passed (everything imported and warm).
            assert len(list(client.messages.batches.results(batch_of(20)))) == 20
            baseline = settled_rss_kb(proxy.process.pid)
            big = batch_of(4000)  # 4,000 lines of ~50 KB: ~200 MB
            peak = baseline
            received = 0
            headers = {"x-aispendtrack-key": proxy.key, "x-api-key": "k", "anthropic-version": "2023-06-01",
                       **tags("big")}
            with httpx.stream("GET", f"{proxy.url}/v1/messages/batches/{big}/results", headers=headers,
                              timeout=120) as response:
                for n, chunk in enumerate(response.iter_bytes()):
                    received += len(chunk)
                    if n % 200 == 0:
                        peak = max(peak, rss_kb(proxy.process.pid))
            peak = max(peak, rss_kb(proxy.process.pid))
            assert received > 200_000_000
            # Flat: the proxy grew by far less than the file (a buffered body would add 200 MB and more).
            # Measured: ~25-30 MB whatever the size (50 MB to 1 GB), the allocator's, not the body's.
            assert (peak - baseline) * 1024 < received / 4, (baseline, peak, received)
            rows = usage_rows(proxy, ("big",), calls=9, timeout=60)
            assert len(rows) == 2  # the small batch's and the big one's
            assert max(r["output_tokens"] for r in rows) == sum(300 + n for n in range(3999))
        finally:
            proxy.stop()


def test_shared_storage_a_batch_created_on_one_replica_is_recorded_once_whichever_downloads_it(tmp_path,
                                                                                              monkeypatch):
    """Replica 0 writes every 3 s, so replica 1 sees the download before replica 0's record of the
    batch (its creation, or the output file it completed with) is in the catalog: the usage waits
    for it, and still goes to the creator."""
    from .helpers import run_cli
    from .pg import Cluster

    cluster = Cluster()
    try:
        monkeypatch.setenv("AISPENDTRACK_CATALOG", cluster.create_database("batches"))
        monkeypatch.setenv("AISPENDTRACK_DATA_PATH", str(tmp_path / "lake"))
        key = json.loads(run_cli(tmp_path / "admin", "keys", "create", "--name", "shared", "--json"))["key"]
        with FakeProvider() as fake:
            fake.batches = BatchApi()
            replicas = [start_proxy(tmp_path / f"replica{i}", fake.url, tmp_path / f"replica{i}.log", key=key,
                                    flush_ms=flush) for i, flush in enumerate((3000, 250))]
            try:
                creator = replicas[0].anthropic(headers=tags("shared-acme", "nightly-summaries"))
                batch_id = ended_batch(creator, fake, ["short-0", "short-1", "failed-2"])
                for replica in (replicas[1], replicas[0], replicas[1]):
                    results = list(replica.anthropic(headers=tags("shared-ops")).messages.batches.results(batch_id))
                    assert len(results) == 3

                openai_creator = replicas[0].openai(headers=tags("shared-acme-openai", "nightly-summaries"))
                batch = completed_openai_batch(openai_creator, openai_creator, MINI, 2)
                replicas[1].openai(headers=tags("shared-ops-openai")).files.content(batch.output_file_id)

                # create, 2 retrieves, then 3 x (a retrieve and the results)
                rows = usage_rows(replicas[1], ("shared-acme", "shared-ops"), calls=9, expect=1, timeout=30)
                # upload, create, 2 retrieves, download
                openai_rows = usage_rows(replicas[1], ("shared-acme-openai", "shared-ops-openai"), calls=5,
                                         expect=1, timeout=30)
            finally:
                for replica in replicas:
                    replica.stop()
        assert len(rows) == 1
        assert (rows[0]["customer_id"], rows[0]["feature"]) == ("shared-acme", "nightly-summaries")
        assert rows[0]["input_tokens"] == 500 + 501
        assert cost(rows[0]) == (Decimal(1001) * Decimal("1.5") + Decimal(601) * Decimal("7.5")) / M
        assert [(r["customer_id"], r["input_tokens"], r["output_tokens"]) for r in openai_rows] == [
            ("shared-acme-openai", 1000 + 1001, 200 + 201)]
    finally:
        cluster.remove()
