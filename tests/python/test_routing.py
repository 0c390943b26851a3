"""Routing as SDK users see it: a pool falls back behind one model name, routing
metadata and headers explain it, and a routing config chosen by header applies its
variant -- with the official ``openai`` SDK and LangChain, plain and streaming."""

from __future__ import annotations

from typing import Iterator

import pytest
from langchain_openai import ChatOpenAI

from conftest import BACKUP, CONFIG, MODEL, POOL, PRIMARY, Emulator, Target

pytestmark = pytest.mark.gateway


@pytest.fixture
def failing_primary(emu: Emulator) -> Iterator[Emulator]:
    """The pool's first target answers 503 for the test, healthy again after."""
    emu.fault(PRIMARY, status=503)
    emu.fault(BACKUP)
    yield emu
    emu.fault(PRIMARY)


def test_pool_falls_back_and_explains(target: Target, failing_primary: Emulator) -> None:
    raw = target.client().chat.completions.with_raw_response.create(
        model=POOL, messages=[{"role": "user", "content": "hi pool"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: hi pool"
    assert raw.headers["x-llmgw-provider"] == "backup"
    assert raw.headers["x-llmgw-attempts"] == "2"
    assert raw.headers["x-llmgw-fallback"] == "true"
    meta = raw.http_response.json()["metadata"]
    assert meta["requested_model"] == POOL
    assert meta["strategy"] == "priority"
    assert [(a["provider"], a["status"]) for a in meta["attempts"]] == [("primary", "error"), ("backup", "ok")]
    assert meta["attempts"][0]["http_status"] == 503
    assert failing_primary.fault_requests(PRIMARY) == 1


def test_pool_stream_carries_the_attempts_on_its_last_chunk(target: Target, failing_primary: Emulator) -> None:
    stream = target.client().chat.completions.create(
        model=POOL, messages=[{"role": "user", "content": "[emu:words=5] go"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "lorem ipsum dolor sit amet"
    last = chunks[-1].model_dump()
    assert last["metadata"]["used_provider"] == "backup", last
    assert len(last["metadata"]["attempts"]) == 2


def test_config_header_applies_its_variant(target: Target, emu: Emulator) -> None:
    raw = target.client().chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi config"}],
        temperature=0.9,
        extra_headers={"x-llmgw-config": CONFIG},
    )
    assert raw.headers["x-llmgw-config"] == CONFIG
    assert raw.headers["x-llmgw-variant"] == "terse"
    sent = emu.last_request()["body"]
    assert sent["temperature"] == 0.1, "the variant's params win"
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}


def test_unknown_config_is_a_400_naming_the_header(target: Target) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        target.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], extra_headers={"x-llmgw-config": "nope"}
        )
    assert e.value.body["param"] == "x-llmgw-config"


def test_langchain_through_a_pool_and_a_config(target: Target, failing_primary: Emulator) -> None:
    llm = ChatOpenAI(
        model=POOL,
        base_url=target.base_url,
        api_key=target.api_key,
        max_retries=0,
        timeout=30,
        default_headers={"x-llmgw-config": CONFIG},
    )
    # The config's variant names the model, so the pool is not reached here.
    msg = llm.invoke("hello")
    assert msg.content == "You said: hello"
    assert failing_primary.fault_requests(PRIMARY) == 0
    plain = ChatOpenAI(model=POOL, base_url=target.base_url, api_key=target.api_key, max_retries=0, timeout=30)
    pieces = list(plain.stream("[emu:words=3] x"))
    assert "".join(p.content for p in pieces if isinstance(p.content, str)) == "lorem ipsum dolor"
