"""The emulator's own contract on the raw wire: SSE framing, directives, recording."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from conftest import EMU_KEY, MODEL, Emulator

AUTH = {"Authorization": f"Bearer {EMU_KEY}"}


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    emulator.clear()
    return emulator


def post(emu: Emulator, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(f"{emu.base_url}/chat/completions", json=body, headers=AUTH, timeout=30, **kw)


def events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        out.append(block[len("data: "):])
    return out


def test_sse_framing_and_usage_chunk(emu: Emulator) -> None:
    resp = post(
        emu,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi there"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    data = events(resp.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]] == ["You", " said:", " hi", " there"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 2 + 4
    assert "obfuscation" not in chunks[-1]
    assert all("obfuscation" in c for c in chunks[:-1])


def test_errors_have_openai_shape(emu: Emulator) -> None:
    r = httpx.post(f"{emu.base_url}/chat/completions", json={}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = post(emu, {"model": MODEL, "messages": [{"role": "user", "content": "x [emu:status=503]"}]})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    r = post(emu, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
    r = httpx.get(f"{emu.url}/v1/nothing-here", headers=AUTH)
    assert r.status_code == 404 and "error" in r.json()


def test_delay_and_finish_directives(emu: Emulator) -> None:
    start = time.monotonic()
    r = post(emu, {"model": MODEL, "messages": [{"role": "user", "content": "a [emu:delay_ms=300] b [emu:finish=content_filter]"}]})
    assert time.monotonic() - start >= 0.3
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "You said: a b"
    assert choice["finish_reason"] == "content_filter"


def test_recording(emu: Emulator) -> None:
    post(emu, {"model": MODEL, "messages": [{"role": "user", "content": "record me"}]})
    httpx.post(f"{emu.base_url}/chat/completions", content=b"{nope", headers=AUTH)
    reqs = emu.requests()
    assert [r["outcome"] for r in reqs] == ["completed", "error"]
    first = reqs[0]
    assert first["method"] == "POST" and first["path"] == "/v1/chat/completions"
    assert first["headers"]["authorization"] == f"Bearer {EMU_KEY}"
    assert first["body"]["messages"][0]["content"] == "record me"
    assert reqs[1]["body"] is None
    emu.clear()
    assert emu.requests() == []


def test_abort_mid_stream_drops_connection(emu: Emulator) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "[emu:words=30][emu:abort_mid_stream]"}], "stream": True}
    received = b""
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", f"{emu.base_url}/chat/completions", json=body, headers=AUTH, timeout=10) as r:
            for part in r.iter_bytes():
                received += part
    assert received.startswith(b"data: ")
    assert b"[DONE]" not in received
    assert emu.last_request()["outcome"] == "error"
