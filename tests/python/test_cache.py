"""The response cache through the official OpenAI SDK: a client opts in per request with
``extra_headers={"cache-control": "max-age=60"}``; the second identical request is served
from the cache (the emulator sees one request), plain and streaming, and says so in the
``x-llmgw-cache`` header and the response's ``metadata``."""

from __future__ import annotations

import uuid

import pytest

from conftest import MODEL, Emulator, Target

pytestmark = pytest.mark.gateway

CACHE = {"cache-control": "max-age=60"}


def upstream(emu: Emulator, nonce: str) -> int:
    """Requests the emulator received whose prompt holds ``nonce``."""
    return sum(
        1
        for r in emu.requests()
        if r["body"] and nonce in str(r["body"].get("messages"))
    )


def test_plain_hit_after_miss(target: Target) -> None:
    nonce = uuid.uuid4().hex
    messages = [{"role": "user", "content": f"[emu:words=8] cache {nonce}"}]
    client = target.client()
    first = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, extra_headers=CACHE)
    assert first.headers["x-llmgw-cache"] == "miss"
    second = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, extra_headers=CACHE)
    assert second.headers["x-llmgw-cache"] == "hit"
    assert int(second.headers["age"]) >= 0
    a, b = first.parse(), second.parse()
    assert a.choices[0].message.content == b.choices[0].message.content
    meta = second.http_response.json()["metadata"]
    assert meta["cache"] == "hit" and meta["used_provider"] == "emu", meta
    assert second.http_response.json()["usage"]["cost_usd"] == 0
    assert upstream(target.emu, nonce) == 1

    # Another temperature is another request.
    third = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, temperature=0.5, extra_headers=CACHE
    )
    assert third.headers["x-llmgw-cache"] == "miss"
    assert upstream(target.emu, nonce) == 2


def test_streaming_replays_from_the_cache(target: Target) -> None:
    nonce = uuid.uuid4().hex
    messages = [{"role": "user", "content": f"[emu:words=6] stream {nonce}"}]
    client = target.client()

    def run() -> tuple[str, str, dict]:
        with client.chat.completions.with_streaming_response.create(
            model=MODEL,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=CACHE,
        ) as resp:
            header = resp.headers["x-llmgw-cache"]
            chunks = list(resp.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return header, text, chunks[-1].model_dump()

    header, text, _ = run()
    assert header == "miss"
    assert len(text.split()) == 6
    header, replayed, last = run()
    assert header == "hit"
    assert replayed == text
    assert last["usage"]["cost_usd"] == 0, last
    assert last["metadata"]["cache"] == "hit", last
    assert upstream(target.emu, nonce) == 1

    # A plain request hits the entry the stream stored.
    plain = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, extra_headers=CACHE)
    assert plain.headers["x-llmgw-cache"] == "hit"
    assert plain.parse().choices[0].message.content == text
