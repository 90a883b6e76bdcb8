"""OpenAI's Realtime API through the proxy with the official SDK's realtime client (WebSocket):
one row per ``response.done`` with text, audio and cached tokens by kind, priced from OpenAI's price
page by hand here; tagged at the upgrade; every frame passed on byte for byte; a socket closed
mid-response stored unpriced with its reason; a key over its limit refused at the upgrade.

The upstream is tests/realtime_upstream.py, strict at the handshake and in its event sequence.
"""

from __future__ import annotations

import base64
import json
import re
import time
from decimal import Decimal

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import realtime_upstream as fake
from .helpers import run_cli, start_proxy, until_read

M = Decimal(1_000_000)
MODEL = "gpt-realtime"
CLIENT_TIMEOUT_S = 2  # how long a connection may take to send a request: a WebSocket lives longer


@pytest.fixture(scope="module")
def realtime():
    with fake.RealtimeProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, realtime):
    home = tmp_path_factory.mktemp("home")
    running = start_proxy(home, realtime.url, tmp_path_factory.mktemp("logs") / "proxy.log",
                          extra_args=("--client-timeout", str(CLIENT_TIMEOUT_S)))
    yield running
    running.stop()


def _connect(proxy, customer: str, key: str | None = None, model: str = MODEL):
    client = proxy.openai(headers={"x-aispendtrack-key": key or proxy.key})
    return client.realtime.connect(model=model, extra_headers={"x-customer-id": customer, "x-feature": "voice"})


def _until(conn, event_type: str) -> list[bytes]:
    """The frames the client received, raw, up to and including the first ``event_type``."""
    frames = []
    while True:
        frames.append(conn.recv_bytes())
        try:
            if json.loads(frames[-1]).get("type") == event_type:
                return frames
        except ValueError:
            pass  # a frame that is not JSON (the fake's "garbled" one)


# OpenAI's price page, per million tokens: (text input, cached, output), (audio input, cached, output).
PRICES = {"gpt-realtime": (("4", "0.40", "16"), ("32", "0.40", "64")),
          "gpt-realtime-mini": (("0.60", "0.06", "2.40"), ("10", "0.30", "20"))}


def _gpt_realtime_cost(usage: dict, model: str = MODEL) -> Decimal:
    (text_in, text_cached, text_out), (audio_in, audio_cached, audio_out) = (
        tuple(Decimal(p) for p in kind) for kind in PRICES[model])
    inp, cached, out = usage["input_token_details"], usage["input_token_details"]["cached_tokens_details"], \
        usage["output_token_details"]
    return (Decimal(inp["text_tokens"] - cached["text_tokens"]) * text_in + cached["text_tokens"] * text_cached
            + Decimal(inp["audio_tokens"] - cached["audio_tokens"]) * audio_in + cached["audio_tokens"] * audio_cached
            + out["text_tokens"] * text_out + out["audio_tokens"] * audio_out) / M


def test_each_response_done_is_a_row_with_tokens_by_kind_priced_exactly_and_frames_pass_unchanged(
        proxy, realtime, customer):
    before = len(realtime.connections)
    with _connect(proxy, customer) as conn:
        received = _until(conn, "session.created")
        conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        received += _until(conn, "session.updated")
        spoken = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(48_000)).decode()})
        conn.send_raw(spoken)  # a second of the user's voice
        for _ in range(2):
            conn.response.create()
            received += _until(conn, "response.done")
    [upstream] = realtime.connections[before:]
    assert received == upstream.sent  # every server frame, byte for byte, in order
    assert [json.loads(f)["type"] for f in upstream.received] == ["session.update", "input_audio_buffer.append",
                                                                  "response.create", "response.create"]
    assert upstream.received[1] == spoken.encode()  # the client's frame, byte for byte
    assert not {"x-aispendtrack-key", "x-customer-id", "x-feature"} & set(upstream.headers)
    assert upstream.headers["authorization"] == "Bearer sk-test-key"
    rows = proxy.rows(customer, expect=2)
    assert len(rows) == 2
    usage = fake.USAGE
    for row in rows:
        assert (row["provider"], row["endpoint"], row["model"], row["feature"]) == ("openai", "/v1/realtime",
                                                                                    MODEL, "voice")
        assert (row["usage_source"], row["priced"], row["outcome"], row["error"]) == ("reported", True,
                                                                                      "completed", None)
        # 1200 input = 200 text + 1000 audio, of which 640 cached (128 text, 512 audio); 900 output = 100 + 800.
        assert (row["input_tokens"], row["input_audio_tokens"], row["cache_read_tokens"],
                row["cache_read_audio_tokens"], row["output_tokens"], row["output_audio_tokens"]) == (
            560, 488, 640, 512, 900, 800)
        assert Decimal(str(row["cost_usd"])) == _gpt_realtime_cost(usage)
        assert isinstance(row["proxy_us"], int) and row["proxy_us"] > 0  # the session's frames, read by our hook
    report = json.loads(run_cli(proxy.home, "report", "--customer", customer, "--format", "json"))
    [line] = report  # one model
    assert (line["model"], line["calls"]) == (MODEL, 2)
    assert Decimal(str(line["cost_usd"])) == 2 * _gpt_realtime_cost(usage)


def test_a_socket_closed_mid_response_is_stored_unpriced_with_the_reason_never_as_free(proxy, realtime, customer):
    with _connect(proxy, customer) as conn:
        _until(conn, "session.created")
        conn.response.create()
        _until(conn, "response.done")
        conn.response.create(response={"instructions": "cut"})
        _until(conn, "response.output_audio.delta")
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv_bytes()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011  # the server's close, passed on
    rows = sorted(proxy.rows(customer, expect=2), key=lambda r: r["priced"])
    assert len(rows) == 2
    cut, whole = rows
    assert whole["priced"] is True and whole["output_audio_tokens"] == 800
    assert (cut["model"], cut["priced"], cut["cost_usd"], cut["outcome"]) == (MODEL, False, None, "upstream_failed")
    assert cut["error"] == "no usage: the WebSocket closed before response.done (closed by the server, code 1011)"


def test_a_frame_that_is_not_json_is_passed_on_skipped_and_logged_once(proxy, realtime, customer):
    before = len(realtime.connections)
    with _connect(proxy, customer) as conn:
        received = _until(conn, "session.created")
        for _ in range(2):
            conn.response.create(response={"instructions": "garbled"})
            received += _until(conn, "response.done")
    [upstream] = realtime.connections[before:]
    assert received == upstream.sent and b'{"type": "response.done", "response": {"usage": ' in received
    rows = proxy.rows(customer, expect=2)
    assert len(rows) == 2 and all(r["priced"] for r in rows)
    logged = re.findall(r"a response.done frame that is not a JSON event was skipped", proxy.log_path.read_text())
    assert len(logged) == 1


def test_a_key_over_its_limit_is_refused_at_the_upgrade_with_retry_after(proxy, realtime, customer):
    created = json.loads(run_cli(proxy.home, "keys", "create", "--name", "voice-limited", "--json"))
    run_cli(proxy.home, "keys", "set-limit", str(created["id"]), "--per-hour", "1")
    until_read(proxy)  # the key and its limit, read together
    before = len(realtime.connections)
    with _connect(proxy, customer, created["key"]) as conn:
        _until(conn, "session.created")
    with pytest.raises(InvalidStatus) as refused:
        _connect(proxy, customer, created["key"]).enter()
    response = refused.value.response
    assert response.status_code == 429 and int(response.headers["retry-after"]) > 0
    assert b"limit" in response.body
    assert len(realtime.connections) == before + 1  # the refused upgrade never reached OpenAI


def test_a_session_lives_past_the_client_timeout_of_requests(proxy, realtime, customer):
    with _connect(proxy, customer) as conn:
        _until(conn, "session.created")
        time.sleep(CLIENT_TIMEOUT_S + 2.5)  # quiet, as a user thinking; the deadline is checked every second
        conn.response.create()
        _until(conn, "response.done")
    assert len(proxy.rows(customer, expect=1)) == 1


def _rss_bytes(pid: int) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def test_a_long_session_does_not_keep_its_frames_in_the_proxy(proxy, realtime, customer):
    before = len(realtime.connections)
    with _connect(proxy, customer) as conn:
        _until(conn, "session.created")
        # The first long responses set the process's high-water mark (buffers, the allocator's arenas:
        # measured, it stays flat after two); the next ones show what stays: with every frame kept,
        # mitmproxy's habit, each adds its 51 MB.
        for _ in range(2):
            conn.response.create(response={"instructions": "long"})
            _until(conn, "response.done")
        baseline = _rss_bytes(proxy.process.pid)
        received = []
        for _ in range(2):
            conn.response.create(response={"instructions": "long"})
            received += _until(conn, "response.done")
        grown = _rss_bytes(proxy.process.pid) - baseline
    passed = sum(len(f) for f in realtime.connections[before].sent[-len(received):])
    assert passed > 100_000_000 and len(received) == 2 * (fake.LONG_DELTAS + 3)
    assert grown < passed / 5, f"the proxy grew by {grown:,} bytes while {passed:,} bytes of frames passed"
    assert len(proxy.rows(customer, expect=4)) == 4


def test_a_session_that_crosses_a_blocking_budget_is_recorded_exactly_and_the_next_upgrade_refused(
        proxy, realtime, customer):
    one = _gpt_realtime_cost(fake.USAGE)  # $0.06896 a response
    run_cli(proxy.home, "budgets", "set", "--scope", f"customer:{customer}", "--all-keys", "--daily", "0.10",
            "--block")
    until_read(proxy)  # the budget, read with the keys
    with _connect(proxy, customer) as conn:  # the budget is not spent yet: the upgrade is let through
        _until(conn, "session.created")
        for _ in range(3):  # the second response crosses $0.10; the session is not cut mid-way
            conn.response.create()
            _until(conn, "response.done")
    rows = proxy.rows(customer, expect=3)
    assert len(rows) == 3 and sum(Decimal(str(r["cost_usd"])) for r in rows) == 3 * one
    with pytest.raises(InvalidStatus) as refused:
        _connect(proxy, customer).enter()
    response = refused.value.response
    assert response.status_code == 429 and int(response.headers["retry-after"]) > 0
    assert b"budget" in response.body


def test_a_response_done_too_large_to_read_is_passed_on_and_stored_unpriced_with_why(proxy, realtime, customer):
    before = len(realtime.connections)
    with _connect(proxy, customer) as conn:
        received = _until(conn, "session.created")
        conn.response.create(response={"instructions": "huge"})
        received += _until(conn, "response.done")
        conn.response.create()
        received += _until(conn, "response.done")  # the session goes on, metered
    assert received == realtime.connections[before].sent and len(received[4]) > fake.HUGE_TEXT  # passed on whole
    rows = sorted(proxy.rows(customer, expect=2), key=lambda r: r["priced"])
    huge, plain = rows
    assert plain["priced"] is True and plain["output_tokens"] == 900
    assert (huge["priced"], huge["cost_usd"], huge["model"]) == (False, None, MODEL)
    assert re.fullmatch(r"usage unreadable: a response.done of [\d,]+ bytes \(more than 4,194,304\) was not read",
                        huge["error"])


def test_cached_audio_is_priced_at_its_own_rate_not_cached_texts(proxy, realtime, customer):
    """gpt-realtime-mini reads cached audio at $0.30 and cached text at $0.06 per million."""
    with _connect(proxy, customer, model="gpt-realtime-mini") as conn:
        _until(conn, "session.created")
        conn.response.create()
        _until(conn, "response.done")
    [row] = proxy.rows(customer)
    assert row["model"] == "gpt-realtime-mini" and row["cache_read_audio_tokens"] == 512
    assert Decimal(str(row["cost_usd"])) == _gpt_realtime_cost(fake.USAGE, "gpt-realtime-mini")


def test_a_model_the_client_names_in_session_update_is_not_the_price(proxy, realtime, customer):
    """The session's model is the server's (the upgrade's, session.created/updated): OpenAI refuses
    a session.update naming another, so a client's claim of the cheaper mini must not price the call."""
    with _connect(proxy, customer) as conn:
        _until(conn, "session.created")
        conn.session.update(session={"type": "realtime", "model": "gpt-realtime-mini"})
        [refused] = _until(conn, "error")
        assert json.loads(refused)["error"]["param"] == "session.model"
        conn.response.create()
        _until(conn, "response.done")
    [row] = proxy.rows(customer)
    assert row["model"] == MODEL
    assert Decimal(str(row["cost_usd"])) == _gpt_realtime_cost(fake.USAGE, MODEL)


def test_a_response_under_way_when_the_proxy_stops_is_stored_unpriced(tmp_path, realtime, customer):
    proxy = start_proxy(tmp_path / "home", realtime.url, tmp_path / "proxy.log")
    try:
        with _connect(proxy, customer) as conn:
            _until(conn, "session.created")
            conn.response.create(response={"instructions": "hold"})
            _until(conn, "response.output_audio.delta")
            proxy.stop()  # SIGTERM, the session still open
    except ConnectionClosed:
        pass  # the SDK closing a socket the proxy has closed
    finally:
        proxy.stop()
    [row] = proxy.rows(customer, timeout=0)
    assert (row["model"], row["priced"], row["cost_usd"], row["outcome"]) == (MODEL, False, None, "proxy_stopped")
    assert row["error"] == "no usage: the proxy stopped before response.done"


@pytest.mark.parametrize(("transcriber", "cost"), [
    # gpt-4o-transcribe: audio input $6, text output $10 per million tokens; whisper-1: $0.006 a minute.
    ("gpt-4o-transcribe", (120 * Decimal(6) + 9 * Decimal(10)) / M),
    ("whisper-1", Decimal("0.006") * Decimal(str(fake.TRANSCRIPTION_SECONDS)) / 60)])
def test_the_transcription_of_the_users_audio_is_a_row_of_its_own_model(proxy, realtime, customer, transcriber,
                                                                       cost):
    """Billed apart from the responses, by the transcription model: it was never recorded, and a
    session that only transcribed recorded nothing."""
    with _connect(proxy, customer) as conn:
        _until(conn, "session.created")
        conn.session.update(session={"type": "realtime", "audio": {"input": {"transcription": {"model": transcriber}}}})
        _until(conn, "session.updated")
        conn.input_audio_buffer.append(audio=base64.b64encode(bytes(48_000)).decode())
        conn.input_audio_buffer.commit()
        _until(conn, "conversation.item.input_audio_transcription.completed")
        conn.response.create()
        _until(conn, "response.done")
    rows = {row["model"]: row for row in proxy.rows(customer, expect=2)}
    assert set(rows) == {transcriber, MODEL}
    heard = rows[transcriber]
    assert (heard["endpoint"], heard["usage_source"], heard["priced"], heard["feature"]) == (
        "/v1/realtime", "reported", True, "voice")
    if transcriber == "whisper-1":
        assert Decimal(str(heard["audio_seconds"])) == Decimal("2.5")
    else:
        assert (heard["input_tokens"], heard["input_audio_tokens"], heard["output_tokens"]) == (120, 120, 9)
    assert Decimal(str(heard["cost_usd"])) == cost
    assert Decimal(str(rows[MODEL]["cost_usd"])) == _gpt_realtime_cost(fake.USAGE)


def test_a_second_response_under_way_when_the_socket_closes_is_stored_unpriced_too(proxy, realtime, customer):
    """An out-of-band response started before the first was done: the first's response.done took the
    one slot there was, and the second, cut off by the close, was never recorded."""
    with _connect(proxy, customer) as conn:
        _until(conn, "session.created")
        conn.response.create(response={"instructions": "overlap"})
        _until(conn, "response.done")
        with pytest.raises(ConnectionClosed):
            conn.recv_bytes()
    rows = sorted(proxy.rows(customer, expect=2), key=lambda r: r["priced"])
    assert len(rows) == 2
    cut, whole = rows
    assert whole["priced"] is True and Decimal(str(whole["cost_usd"])) == _gpt_realtime_cost(fake.USAGE)
    assert (cut["priced"], cut["cost_usd"], cut["outcome"]) == (False, None, "upstream_failed")
    assert cut["error"] == "no usage: the WebSocket closed before response.done (closed by the server, code 1011)"
