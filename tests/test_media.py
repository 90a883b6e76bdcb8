"""Images, audio and speech through the proxy with the official OpenAI SDK: each call's row holds
its units (tokens by kind, images, seconds, characters) and the cost worked out here by hand from
the price on OpenAI's price page; a billable endpoint we do not meter is unpriced, named, never $0.

The upstream is tests/media_upstream.py, strict at the wire (multipart parsed as a server does).
"""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest

from . import media_upstream as fake
from .helpers import key_with_blocking_budget, run_cli, start_proxy

M = Decimal(1_000_000)


@pytest.fixture(scope="module")
def upstream():
    """This module's provider (conftest's ``proxy`` sends to it): the media endpoints' wire fake."""
    with fake.MediaProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def media(upstream):
    return upstream


def _client(proxy, sent: list[bytes] | None = None, **kwargs):
    """The SDK as a user makes it; ``sent`` collects the bytes of every request body it sends."""
    if sent is not None:
        kwargs["http_client"] = httpx.Client(event_hooks={"request": [lambda r: sent.append(r.read())]})
    return proxy.openai(**kwargs)


def _tag(customer: str) -> dict:
    return {"extra_headers": {"x-customer-id": customer}}


def _usd(value) -> Decimal:
    return Decimal(str(value))


def test_an_image_generation_is_metered_in_text_and_image_tokens(proxy, media, customer):
    result = _client(proxy).images.generate(model="gpt-image-1", prompt="a red cat on a mat", n=2,
                                            size="1024x1024", quality="high", **_tag(customer))
    assert len(result.data) == 2 and result.usage.output_tokens == 2 * fake.IMAGE_OUTPUT_TOKENS
    [row] = proxy.rows(customer)
    assert row["endpoint"] == "/v1/images/generations" and row["model"] == "gpt-image-1"
    assert row["usage_source"] == "reported" and row["priced"] is True
    assert (row["input_tokens"], row["input_image_tokens"], row["output_tokens"], row["images"]) == (6, 0, 8320, 2)
    # gpt-image-1: text input $5, output $40 per million tokens.
    assert _usd(row["cost_usd"]) == (6 * Decimal(5) + 8320 * Decimal(40)) / M


def test_a_streamed_image_generation_is_metered_from_its_completed_event(proxy, media, customer):
    """One image, streamed: its usage is in image_generation.completed (stored unpriced before, as if
    the answer had none). Several: unpriced with why, never a sum that may count twice."""
    stream = _client(proxy).images.generate(model="gpt-image-1", prompt="a red cat on a mat", stream=True,
                                            partial_images=1, **_tag(customer))
    assert [e.type for e in stream] == ["image_generation.partial_image", "image_generation.completed"]
    [row] = proxy.rows(customer)
    assert (row["stream"], row["usage_source"], row["images"]) == (True, "reported", 1)
    assert (row["input_tokens"], row["output_tokens"]) == (6, fake.IMAGE_OUTPUT_TOKENS)
    assert _usd(row["cost_usd"]) == (6 * Decimal(5) + fake.IMAGE_OUTPUT_TOKENS * Decimal(40)) / M
    two = f"{customer}-two"
    list(_client(proxy).images.generate(model="gpt-image-1", prompt="two cats", stream=True, n=2, **_tag(two)))
    [several] = proxy.rows(two)
    assert (several["priced"], several["cost_usd"]) == (False, None)
    assert "a streamed answer of several images is not metered" in several["error"]


def test_an_image_edit_is_metered_and_its_upload_reaches_openai_byte_for_byte(proxy, media, customer):
    sent: list[bytes] = []
    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
    _client(proxy, sent).images.edit(model="gpt-image-1", image=("cat.png", picture, "image/png"),
                                     prompt="add a small hat", **_tag(customer))
    [row] = proxy.rows(customer)
    assert media.last().body == sent[-1] and picture in sent[-1]  # the client's multipart, untouched
    assert row["endpoint"] == "/v1/images/edits" and row["model"] == "gpt-image-1"  # read from the form
    text, image = 4, fake.IMAGE_INPUT_IMAGE_TOKENS
    assert (row["input_tokens"], row["input_image_tokens"], row["output_tokens"]) == (
        text + image, image, fake.IMAGE_OUTPUT_TOKENS)
    # gpt-image-1: text input $5, image input $10, output $40 per million tokens.
    assert _usd(row["cost_usd"]) == (text * 5 + image * 10 + fake.IMAGE_OUTPUT_TOKENS * 40) / M


@pytest.mark.parametrize(("request_options", "expected"), [
    # OpenAI's price page, per image: DALL·E 3 standard 1024x1024 $0.04, HD 1024x1792 or 1792x1024 $0.12;
    # DALL·E 2 256x256 $0.016, 512x512 $0.018, 1024x1024 $0.020.
    ({"model": "dall-e-3"}, Decimal("0.04")),  # OpenAI's defaults: 1024x1024, standard
    ({"model": "dall-e-3", "size": "1792x1024", "quality": "hd"}, Decimal("0.12")),
    ({"model": "dall-e-3", "size": "1024x1792", "quality": "standard"}, Decimal("0.08")),
    ({"model": "dall-e-2", "size": "512x512", "n": 3}, 3 * Decimal("0.018")),
    ({"model": "dall-e-2"}, Decimal("0.02")),
])
def test_a_dall_e_image_is_priced_per_image_by_its_size_and_quality(proxy, media, customer, request_options,
                                                                    expected):
    result = _client(proxy).images.generate(prompt="a red cat on a mat", **request_options, **_tag(customer))
    [row] = proxy.rows(customer)
    assert len(result.data) == row["images"] == request_options.get("n", 1)
    assert (row["model"], row["usage_source"], row["priced"]) == (request_options["model"], "reported", True)
    assert _usd(row["cost_usd"]) == expected
    assert row["price_source"].startswith("patch patches.toml [[image_price]]#")  # cited there


def test_a_dall_e_2_edit_is_priced_by_the_size_in_its_form(proxy, media, customer):
    _client(proxy).images.edit(model="dall-e-2", image=("cat.png", b"\x89PNG fake", "image/png"), prompt="a hat",
                               size="256x256", n=2, **_tag(customer))
    [row] = proxy.rows(customer)
    assert (row["endpoint"], row["images"], _usd(row["cost_usd"])) == ("/v1/images/edits", 2, 2 * Decimal("0.016"))
    # A reprice cannot see the size asked for (not stored): it keeps the price, never unprices the call.
    assert "Checked 1 call; 0 changed" in run_cli(proxy.home, "reprice", "--customer", customer)
    assert _usd(proxy.rows(customer)[0]["cost_usd"]) == 2 * Decimal("0.016")


def test_a_whisper_transcription_is_priced_per_minute_of_audio(proxy, media, customer):
    sent: list[bytes] = []
    audio = fake.wav(8.0)
    result = _client(proxy, sent).audio.transcriptions.create(
        model="whisper-1", file=("hello.wav", audio, "audio/wav"), response_format="verbose_json", **_tag(customer))
    assert result.text == fake.TRANSCRIPT and result.duration == 8.0
    [row] = proxy.rows(customer)
    assert media.last().body == sent[-1] and audio in sent[-1]
    assert row["model"] == "whisper-1" and row["usage_source"] == "reported" and Decimal(str(row["audio_seconds"])) == 8
    assert _usd(row["cost_usd"]) == Decimal("0.006") * 8 / 60  # whisper-1: $0.006 per minute


def test_a_transcript_answered_as_text_is_estimated_from_the_wav_header(proxy, media, customer):
    text = _client(proxy).audio.transcriptions.create(
        model="whisper-1", file=("long.wav", fake.wav(90.5), "audio/wav"), response_format="text", **_tag(customer))
    assert text.strip() == fake.TRANSCRIPT
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "estimated" and Decimal(str(row["audio_seconds"])) == Decimal("90.5")
    assert _usd(row["cost_usd"]) == Decimal("0.006") * Decimal("90.5") / 60


def test_a_gpt_4o_transcript_answered_as_text_is_unpriced_not_free(proxy, media, customer):
    """gpt-4o-transcribe bills tokens; a transcript answered as text reports none, and the WAV
    header's seconds have no price on this model (genai-prices lists none): unpriced, never $0."""
    _client(proxy).audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", fake.wav(60.0), "audio/wav"), response_format="text",
        **_tag(customer))
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "estimated" and Decimal(str(row["audio_seconds"])) == 60
    assert row["cost_usd"] is None and row["priced"] is False


def test_a_transcript_whose_length_nobody_can_tell_is_unpriced_with_the_reason(proxy, media, customer):
    _client(proxy).audio.transcriptions.create(
        model="whisper-1", file=("talk.mp3", b"ID3\x04" + bytes(4000), "audio/mpeg"), response_format="text",
        **_tag(customer))
    [row] = proxy.rows(customer)
    assert row["status"] == 200 and row["cost_usd"] is None and row["priced"] is False
    assert "no duration" in row["error"] and "WAV" in row["error"]


def test_a_gpt_4o_transcription_is_metered_in_audio_and_text_tokens(proxy, media, customer):
    _client(proxy).audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", fake.wav(12.0), "audio/wav"),
                                               **_tag(customer))
    [row] = proxy.rows(customer)
    audio, text, out = 120, fake.TRANSCRIBE_TEXT_TOKENS, fake.TRANSCRIPT_TOKENS
    assert (row["input_tokens"], row["input_audio_tokens"], row["output_tokens"]) == (audio + text, audio, out)
    assert row["usage_source"] == "reported"
    # gpt-4o-transcribe: text input $2.50, audio input $6, text output $10 per million tokens.
    assert _usd(row["cost_usd"]) == (text * Decimal("2.5") + audio * 6 + out * 10) / M


def test_a_streamed_gpt_4o_transcription_is_metered_from_its_done_event(proxy, media, customer):
    stream = _client(proxy).audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("a.wav", fake.wav(4.0), "audio/wav"), stream=True, **_tag(customer))
    assert [e.type for e in stream][-1] == "transcript.text.done"
    [row] = proxy.rows(customer)
    audio, text, out = 40, fake.TRANSCRIBE_TEXT_TOKENS, fake.TRANSCRIPT_TOKENS
    assert row["stream"] is True and row["usage_source"] == "reported"
    assert (row["input_tokens"], row["input_audio_tokens"], row["output_tokens"]) == (audio + text, audio, out)
    # gpt-4o-mini-transcribe: text input $1.25, audio input $3, text output $5 per million tokens.
    assert _usd(row["cost_usd"]) == (text * Decimal("1.25") + audio * 3 + out * 5) / M


def test_a_whisper_translation_without_usage_takes_the_duration_of_its_wav(proxy, media, customer):
    _client(proxy).audio.translations.create(model="whisper-1", file=("fr.wav", fake.wav(30.0), "audio/wav"),
                                             **_tag(customer))
    [row] = proxy.rows(customer)
    assert row["endpoint"] == "/v1/audio/translations" and row["usage_source"] == "estimated"
    assert _usd(row["cost_usd"]) == Decimal("0.006") * 30 / 60


def test_speech_is_priced_per_character_and_its_audio_reaches_the_client_unchanged(proxy, media, customer):
    words = "Today is a wonderful day to build something people love! " * 3
    with _client(proxy).audio.speech.with_streaming_response.create(
            model="tts-1-hd", voice="alloy", input=words, **_tag(customer)) as response:
        audio = b"".join(response.iter_bytes())
    assert audio == media.speech
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "counted" and row["characters"] == len(words) == 171
    assert _usd(row["cost_usd"]) == len(words) * Decimal(30) / M  # tts-1-hd: $30 per million characters


def test_speech_audio_reaches_the_client_before_the_provider_has_sent_it_all(proxy, media, customer):
    """Never buffered whole: the first chunk arrives while the provider still holds the rest back."""
    media.gate.clear()
    try:
        with _client(proxy, timeout=10).audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input="Hello there.", **_tag(customer)) as response:
            chunks = response.iter_bytes()
            first = next(chunks)
            assert first and not media.gate.is_set()
            media.gate.set()
            audio = first + b"".join(chunks)
    finally:
        media.gate.set()
    assert audio == media.speech
    [row] = proxy.rows(customer)
    assert row["characters"] == 12 and _usd(row["cost_usd"]) == 12 * Decimal(15) / M  # tts-1: $15 per M characters


def test_speech_from_gpt_4o_mini_tts_is_metered_from_its_sse_usage(proxy, media, customer):
    speech = _client(proxy).audio.speech.create(model="gpt-4o-mini-tts", voice="coral", input="Say it kindly please",
                                                stream_format="sse", **_tag(customer))
    assert b"speech.audio.done" in speech.content
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "reported" and row["stream"] is True
    assert (row["input_tokens"], row["output_tokens"], row["output_audio_tokens"]) == (4, 1234, 1234)
    # gpt-4o-mini-tts: text input $0.60, audio output $12 per million tokens.
    assert _usd(row["cost_usd"]) == (4 * Decimal("0.6") + 1234 * 12) / M


def test_speech_from_gpt_4o_mini_tts_as_audio_is_unpriced_with_the_reason(proxy, media, customer):
    with _client(proxy).audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="coral", input="Hello", **_tag(customer)) as response:
        assert b"".join(response.iter_bytes()) == media.speech
    [row] = proxy.rows(customer)
    assert row["cost_usd"] is None and row["priced"] is False and "stream_format=sse" in row["error"]


def test_a_billable_endpoint_we_do_not_meter_is_unpriced_and_named_never_free(proxy, media, customer):
    client = _client(proxy)
    client.images.create_variation(image=("cat.png", b"\x89PNG fake", "image/png"), n=1, **_tag(customer))
    client.models.list(**_tag(customer))  # billed nothing: stays $0
    rows = {r["endpoint"]: r for r in proxy.rows(customer, expect=2)}
    variation, models = rows["/v1/images/variations"], rows["/v1/models"]
    assert variation["status"] == 200 and variation["cost_usd"] is None and variation["priced"] is False
    assert variation["usage_source"] == "unmetered" and "/v1/images/variations" in variation["error"]
    assert models["cost_usd"] == 0 and models["priced"] is True
    report = run_cli(proxy.home, "report", "--customer", customer)
    assert "1 more call has no price" in report and "/v1/images/variations" in report
    check = run_cli(proxy.home, "prices", "check")
    assert "not metered" in check and "openai" in check and "/v1/images/variations" in check
    listed = json.loads(run_cli(proxy.home, "prices", "check", "--format", "json"))
    assert {"provider": "openai", "endpoint": "/v1/images/variations"}.items() <= next(
        r for r in listed if r.get("endpoint") == "/v1/images/variations").items()


def test_units_are_in_the_report_export_and_api(proxy, media, customer):
    _client(proxy).audio.speech.create(model="tts-1", voice="alloy", input="x" * 40, **_tag(customer))
    [row] = proxy.rows(customer)
    wide = run_cli(proxy.home, "report", "--customer", customer, "--wide")
    assert "CHARS" in wide and "40" in wide
    exported = run_cli(proxy.home, "export", "--customer", customer, "--format", "csv")
    header, line = exported.splitlines()[:2]
    assert "characters" in header.split(",") and line.split(",")[header.split(",").index("characters")] == "40"


def test_a_large_upload_is_forwarded_whole_and_priced_from_its_header(proxy, media, customer):
    """20 MB of WAV: the provider gets it whole; the meter reads only the form's few fields."""
    audio = fake.wav(600.0)  # 19.2 MB
    _client(proxy, timeout=30).audio.transcriptions.create(
        model="whisper-1", file=("big.wav", audio, "audio/wav"), response_format="srt", **_tag(customer))
    [row] = proxy.rows(customer)
    assert media.last().body.count(audio) == 1
    assert row["usage_source"] == "estimated" and Decimal(str(row["audio_seconds"])) == 600


def test_a_blocking_budget_counts_speech_and_images_in_dollars(tmp_path, media):
    home = tmp_path / "home"
    created = key_with_blocking_budget(home, "speaker", daily="0.005")
    proxy = start_proxy(home, media.url, tmp_path / "proxy.log", key=created["key"])
    try:
        client = _client(proxy, headers={"x-customer-id": "speaker"})
        client.audio.speech.create(model="tts-1-hd", voice="alloy", input="y" * 100)  # 100 x $30/M: $0.003
        client.images.generate(model="gpt-image-1", prompt="one two three")  # (3 x $5 + 4160 x $40)/M: $0.166415
        with pytest.raises(openai.RateLimitError) as raised:
            client.audio.speech.create(model="tts-1-hd", voice="alloy", input="z")
        assert "budget exceeded for customer speaker" in raised.value.message
        assert "$0.169415 spent of the daily budget of $0.005." in raised.value.message
    finally:
        proxy.stop()


def test_a_wav_header_that_lies_about_its_length_is_measured_by_the_bytes_sent(proxy, media, customer):
    audio = bytearray(fake.wav(3.0))
    audio[40:44] = (0xFFFFFFF0).to_bytes(4, "little")  # "data: 4 GB", in a 96 KB file
    _client(proxy).audio.transcriptions.create(model="whisper-1", file=("lie.wav", bytes(audio), "audio/wav"),
                                               response_format="text", **_tag(customer))
    [row] = proxy.rows(customer)
    assert row["usage_source"] == "estimated" and Decimal(str(row["audio_seconds"])) == 3


def test_hostile_multipart_bodies_are_read_within_bounds():
    from addon import multipart
    from addon.audio import wav_seconds
    kind = "multipart/form-data; boundary=b0undary"
    many = b"".join(b'--b0undary\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % n for n in range(5000))
    assert len(multipart.read_fields(many + b"--b0undary--\r\n", kind)) == multipart.MAX_PARTS
    unclosed = b'--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1'
    assert multipart.read_fields(unclosed, kind) == {}  # a part without its end: not read, not guessed
    long_value = (b'--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + b"m" * 5000
                  + b"\r\n--b0undary--")
    assert multipart.read_fields(long_value, kind) == {}
    assert multipart.read_fields(b"--b0undary--", "multipart/form-data") == {}  # no boundary given
    assert wav_seconds(b"RIFF\0\0\0\0WAVEdata\x10\0\0\0", 1000) is None  # data before fmt: no rate
    assert wav_seconds(b"RIFF\0\0\0\0WAVEfmt \xff\xff\xff\xff", 1000) is None  # a chunk past the header
    assert wav_seconds(b"ID3\x04" + bytes(100), 104) is None
