"""Errors arrive in OpenAI's error shape and as the SDK's matching exception classes."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from conftest import EMBED_MODEL, MAX_BODY_BYTES, MODEL, Emulator, Target


def raw_post(target: Target, body: bytes | dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {target.api_key}", "Content-Type": "application/json"}
    url = f"{target.base_url}/chat/completions"
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers=headers, timeout=30)
    return httpx.post(url, json=body, headers=headers, timeout=30)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err


def test_bad_key(target: Target) -> None:
    client = target.client(api_key="sk-not-a-valid-key-000000000000")
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert "sk-not-a-valid-key-000000000000" not in str(e.value.body), "the key was echoed back"


@pytest.mark.gateway
def test_unknown_model(target: Target) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        target.client().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 404
    assert isinstance(e.value.body, dict) and e.value.body["param"] == "model"
    assert e.value.param == "model"


def test_missing_messages(target: Target) -> None:
    resp = raw_post(target, {"model": MODEL})
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["param"] == "messages"
    assert err["type"] == "invalid_request_error"


def test_missing_model(target: Target) -> None:
    resp = raw_post(target, {"messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 400
    assert error_of(resp)["param"] == "model"


def test_malformed_json(target: Target) -> None:
    resp = raw_post(target, b'{"model": "gpt-4o-mini", "messages": [')
    assert resp.status_code == 400
    assert error_of(resp)["type"] == "invalid_request_error"


def test_upstream_500(target: Target, emu: Emulator) -> None:
    with pytest.raises(openai.InternalServerError) as e:
        target.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "[emu:status=500] boom"}]
        )
    if target.via_gateway:
        assert e.value.status_code == 502
        assert "emu" in e.value.message, "the error should name the provider that failed"
    else:
        assert e.value.status_code == 500
        assert e.value.type == "server_error"


def test_upstream_429(target: Target, emu: Emulator) -> None:
    with pytest.raises(openai.RateLimitError) as e:
        target.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "[emu:status=429] slow down"}]
        )
    assert e.value.status_code == 429
    if not target.via_gateway:
        assert e.value.code == "rate_limit_exceeded"
        assert e.value.response.headers["retry-after"] == "1"


def test_upstream_error_in_stream_request(target: Target, emu: Emulator) -> None:
    """An upstream failure before the first byte is a plain HTTP error, streaming or not."""
    with pytest.raises(openai.InternalServerError):
        stream = target.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "[emu:status=503] down"}], stream=True
        )
        for _ in stream:
            pass


@pytest.mark.gateway
def test_invalid_parameter_is_bad_request_error(target: Target) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        target.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=5
        )
    assert e.value.status_code == 400
    assert e.value.param == "temperature"
    assert e.value.type == "invalid_request_error"


@pytest.mark.gateway
@pytest.mark.parametrize("route", ["chat", "embeddings", "transcription"])
def test_request_too_large(target: Target, route: str) -> None:
    """A body above ``edge.max_body_bytes`` is a 413 in OpenAI's error shape; the SDK has
    no subclass for 413, so it raises its ``APIStatusError`` itself."""
    client = target.client()
    big = "x" * MAX_BODY_BYTES
    with pytest.raises(openai.APIStatusError) as e:
        if route == "chat":
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": big}])
        elif route == "embeddings":
            client.embeddings.create(model=EMBED_MODEL, input=big)
        else:
            client.audio.transcriptions.create(model="whisper-1", file=("a.wav", big.encode(), "audio/wav"))
    assert type(e.value) is openai.APIStatusError
    assert e.value.status_code == 413
    assert e.value.type == "invalid_request_error"
    assert e.value.code == "payload_too_large"
    assert "larger than the limit of 1048576 bytes" in e.value.message
    if route == "transcription":
        assert e.value.body["param"] == "file"  # type: ignore[index]
