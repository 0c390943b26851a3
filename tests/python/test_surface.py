"""Legacy completions, images and audio through the official openai SDK: the
emulator directly, then through the gateway in one process and split."""

from __future__ import annotations

import base64
import io
import struct
from typing import Any

import openai
import pytest

from conftest import EMU_KEY, IMAGEN, Target

INSTRUCT = "gpt-3.5-turbo-instruct"


def wav(secs: int) -> bytes:
    """``secs`` seconds of silence: 16 kHz, 8-bit mono WAV."""
    data = bytes(16_000 * secs)
    fmt = struct.pack("<HHIIHH", 1, 1, 16_000, 16_000, 1, 8)
    return (
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )


PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGMAAQAABQABDQottAAAAABJRU5ErkJggg=="
)


def test_completions_plain(target: Target) -> None:
    resp = target.client().completions.create(model=INSTRUCT, prompt="Say this is a test", max_tokens=5)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == "This is a test of"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_completions_several_prompts_echo_suffix(target: Target) -> None:
    resp = target.client().completions.create(
        model=INSTRUCT, prompt=["a ", "b "], max_tokens=2, echo=True, suffix="!", logprobs=1
    )
    assert [c.text for c in resp.choices] == ["a This is!", "b This is!"]
    assert resp.choices[0].logprobs is not None and resp.choices[0].logprobs.tokens


def test_completions_stream(target: Target) -> None:
    stream = target.client().completions.create(
        model=INSTRUCT, prompt="x", max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "This is a"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_completions_chat_model_is_refused(target: Target) -> None:
    # OpenAI answers 404; the gateway passes the provider's refusal on.
    with pytest.raises(openai.NotFoundError) as e:
        target.client().completions.create(model="gpt-4o-mini", prompt="x")
    assert "chat model" in str(e.value)


def test_images_generate(target: Target) -> None:
    client = target.client()
    urls = client.images.generate(model="dall-e-2", prompt="a cat", n=2, size="256x256")
    assert len(urls.data) == 2 and urls.data[0].url
    b64 = client.images.generate(model="dall-e-2", prompt="a cat", response_format="b64_json")
    assert base64.b64decode(b64.data[0].b64_json).startswith(b"\x89PNG")
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="dall-e-2", prompt="a cat", size="7x7")  # type: ignore[arg-type]
    assert e.value.body["param"] == "size"  # type: ignore[index]


@pytest.mark.gateway
def test_images_generate_on_imagen(target: Target) -> None:
    """OpenAI's SDK, a Gemini-backed model: Imagen's :predict behind the gateway."""
    target.emu.clear()
    client = target.client()
    resp = client.images.generate(model=IMAGEN, prompt="a lighthouse", n=2, size="1792x1024")
    assert len(resp.data) == 2
    for i, image in enumerate(resp.data, start=1):
        assert image.b64_json and image.url is None
        png = base64.b64decode(image.b64_json)
        assert png.startswith(b"\x89PNG")
        assert f"aspect=16:9 size=1K image={i}/2 prompt=a lighthouse".encode() in png
    up = target.emu.requests("/v1beta/models/imagen-4.0-generate-001:predict")[-1]
    assert up["headers"]["x-goog-api-key"] == EMU_KEY
    assert up["body"]["parameters"] == {"sampleCount": 2, "aspectRatio": "16:9", "includeRaiReason": True}
    raw = client.images.with_raw_response.generate(model=IMAGEN, prompt="a boat", response_format="b64_json")
    assert raw.headers["x-llmgw-provider"] == "gem"
    assert EMU_KEY not in raw.text
    # Imagen returns bytes only: a link cannot be made, and says so by name.
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model=IMAGEN, prompt="a cat", response_format="url")
    assert e.value.body["param"] == "response_format"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model=IMAGEN, prompt="a cat", n=5)
    assert e.value.body["param"] == "n"  # type: ignore[index]


def test_images_edit(target: Target) -> None:
    resp = target.client().images.edit(
        model="dall-e-2",
        image=("cat.png", io.BytesIO(PNG), "image/png"),
        mask=("mask.png", io.BytesIO(PNG), "image/png"),
        prompt="add a hat",
        n=1,
        size="512x512",
        response_format="b64_json",
    )
    assert resp.data[0].b64_json
    up = target.emu.requests("/v1/images/edits")[-1]
    assert up["body"]["files"]["image"]["filename"] == "cat.png"
    assert up["body"]["fields"]["prompt"] == "add a hat"


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_transcriptions(target: Target, fmt: str) -> None:
    client = target.client()
    out = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav(2), "audio/wav"), response_format=fmt  # type: ignore[arg-type]
    )
    if fmt == "json":
        assert out.text == "hello from the emulator"
    elif fmt == "verbose_json":
        assert out.text == "hello from the emulator" and out.duration == 2.0  # type: ignore[union-attr]
    elif fmt == "text":
        assert out == "hello from the emulator\n"
    elif fmt == "srt":
        assert "00:00:00,000 --> 00:00:02,000" in out  # type: ignore[operator]
    else:
        assert str(out).startswith("WEBVTT")


def test_translations(target: Target) -> None:
    client = target.client()
    out = client.audio.translations.create(model="whisper-1", file=("a.wav", wav(1), "audio/wav"))
    assert out.text == "hello from the emulator"
    text = client.audio.translations.create(
        model="whisper-1", file=("a.wav", wav(1), "audio/wav"), response_format="text"
    )
    assert text == "hello from the emulator\n"


def test_async_client(target: Target, aio: Any) -> None:
    """The async client on the non-chat routes: a completions stream, images, a
    transcription and speech streamed in pieces."""

    async def run() -> tuple[str, Any, Any, bytes]:
        async with target.async_client() as client:
            stream = await client.completions.create(model=INSTRUCT, prompt="x", max_tokens=3, stream=True)
            text = "".join([c.choices[0].text async for c in stream if c.choices])
            image = await client.images.generate(model="dall-e-2", prompt="a cat", response_format="b64_json")
            heard = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(1), "audio/wav"))
            async with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input="Hi"
            ) as speech:
                audio = b"".join([piece async for piece in speech.iter_bytes()])
        return text, image, heard, audio

    text, image, heard, audio = aio(run())
    assert text == "This is a"
    assert base64.b64decode(image.data[0].b64_json).startswith(b"\x89PNG")
    assert heard.text == "hello from the emulator"
    assert audio.startswith(b"ID3") and len(audio) == 6 + 8 * 64 * 2


def test_transcription_without_model_is_refused(target: Target) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        target.client().audio.transcriptions.create(model="", file=("a.wav", wav(1), "audio/wav"))
    assert e.value.body["param"] == "model"  # type: ignore[index]


def test_speech(target: Target) -> None:
    client = target.client()
    resp = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there")
    body = resp.read()
    assert body.startswith(b"ID3") and len(body) == 6 + 8 * 64 * len("Hello there")
    assert resp.response.headers["content-type"] == "audio/mpeg"
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hi", response_format="wav"
    ) as streamed:
        assert streamed.headers["content-type"] == "audio/wav"
        pieces = list(streamed.iter_bytes())
    joined = b"".join(pieces)
    assert joined.startswith(b"RIFF") and len(joined) == 12 + 8 * 64 * 2


@pytest.mark.gateway
def test_gateway_headers_on_audio(target: Target) -> None:
    resp = target.client().audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input="x")
    assert resp.headers["x-llmgw-provider"] == "emu"
    assert resp.headers["x-llmgw-model"] == "tts-1"
