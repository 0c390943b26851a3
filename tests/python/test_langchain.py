"""LangChain's OpenAI integrations against the same targets: ChatOpenAI (invoke, stream,
bind_tools, with_structured_output, async), OpenAIEmbeddings and the legacy OpenAI LLM."""

from __future__ import annotations

import math
from typing import Any, Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings
from pydantic import BaseModel, Field

from conftest import CLAUDE, EMBED_MODEL, MODEL, Emulator, Target


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(description="the city")
    days: int = Field(description="how many days ahead")


def chat(target: Target, **kw) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=target.base_url, api_key=target.api_key, max_retries=0, timeout=30, **kw)


def test_invoke(target: Target, emu: Emulator) -> None:
    msg = chat(target).invoke("hello langchain")
    assert isinstance(msg, AIMessage)
    assert msg.content == "You said: hello langchain"
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["output_tokens"] == 4
    assert msg.response_metadata["finish_reason"] == "stop"


def test_stream(target: Target, emu: Emulator) -> None:
    pieces = list(chat(target, stream_usage=True).stream("stream [emu:words=7] this"))
    assert len(pieces) >= 7
    text = "".join(p.content for p in pieces if isinstance(p.content, str))
    assert text == "lorem ipsum dolor sit amet consectetur adipiscing"
    total = pieces[0]
    for p in pieces[1:]:
        total += p
    assert total.usage_metadata is not None and total.usage_metadata["output_tokens"] == 7


def test_bind_tools_round_trip(target: Target, emu: Emulator) -> None:
    llm = chat(target).bind_tools([GetWeather])
    question = HumanMessage("weather in Paris for tomorrow?")
    first = llm.invoke([question])
    assert len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert call["name"] == "GetWeather"
    assert call["args"] == {"city": "Paris", "days": 1}
    second = llm.invoke([question, first, ToolMessage("sunny", tool_call_id=call["id"])])
    assert second.content == "Tool result: sunny"
    assert not second.tool_calls


def test_stream_tool_call(target: Target, emu: Emulator) -> None:
    llm = chat(target).bind_tools([GetWeather], tool_choice="GetWeather")
    total = None
    for piece in llm.stream("stream a tool call"):
        total = piece if total is None else total + piece
    assert total is not None
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("GetWeather", {"city": "Paris", "days": 1})]


class City(BaseModel):
    """A city."""

    city: str
    population: int
    size: Literal["small", "large"]


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(target: Target, emu: Emulator, method: str) -> None:
    out = chat(target).with_structured_output(City, method=method).invoke("describe a city")  # type: ignore[arg-type]
    assert out == City(city="Paris", population=1, size="small")
    body = emu.last_request()["body"]
    if method == "json_schema":
        assert body["response_format"]["json_schema"]["name"] == "City"
    else:
        assert body["tools"][0]["function"]["name"] == "City"


def test_async_invoke_and_stream(target: Target, emu: Emulator, aio: Any) -> None:
    llm = chat(target, stream_usage=True)

    async def run() -> tuple[AIMessage, list[Any]]:
        return await llm.ainvoke("hello async"), [p async for p in llm.astream("[emu:words=6] astream")]

    msg, pieces = aio(run())
    assert msg.content == "You said: hello async"
    assert "".join(p.content for p in pieces) == "lorem ipsum dolor sit amet consectetur"
    total = pieces[0]
    for p in pieces[1:]:
        total += p
    assert total.usage_metadata is not None and total.usage_metadata["output_tokens"] == 6


def test_embeddings(target: Target, emu: Emulator) -> None:
    # check_embedding_ctx_length=False: the default tokenizes with tiktoken, whose
    # encodings download from the internet; the token-array input is test_embeddings.py's.
    emb = OpenAIEmbeddings(
        model=EMBED_MODEL,
        base_url=target.base_url,
        api_key=target.api_key,
        max_retries=0,
        timeout=30,
        check_embedding_ctx_length=False,
    )
    docs = emb.embed_documents(["first document", "second document"])
    query = emb.embed_query("first document")
    assert len(docs) == 2 and all(len(v) == 1536 for v in docs)
    assert docs[0] != docs[1]
    assert all(abs(a - b) <= 1e-6 for a, b in zip(docs[0], query))
    assert abs(math.sqrt(sum(x * x for x in query)) - 1.0) < 1e-3
    assert target.emu.requests("/v1/embeddings")[-1]["body"]["input"] == ["first document"]


def test_legacy_completions_llm(target: Target, emu: Emulator) -> None:
    llm = OpenAI(
        model="gpt-3.5-turbo-instruct",
        base_url=target.base_url,
        api_key=target.api_key,
        max_retries=0,
        timeout=30,
        max_tokens=5,
    )
    assert llm.invoke("Say this is a test") == "This is a test of"
    pieces = list(llm.stream("Say this is a test"))
    assert len(pieces) >= 5
    assert "".join(pieces) == "This is a test of"


@pytest.mark.gateway
def test_chat_openai_to_an_anthropic_model(target: Target, emu: Emulator) -> None:
    """ChatOpenAI speaks OpenAI's format to the gateway; the model behind it is an
    Anthropic-type provider's."""
    llm = ChatOpenAI(model=CLAUDE, base_url=target.base_url, api_key=target.api_key, max_retries=0, timeout=30)
    assert llm.invoke("hello claude").content == "You said: hello claude"
    pieces = list(llm.stream("[emu:words=5] stream"))
    assert "".join(p.content for p in pieces if isinstance(p.content, str)) == "lorem ipsum dolor sit amet"
    call = llm.bind_tools([GetWeather], tool_choice="GetWeather").invoke("weather?").tool_calls[0]
    assert call["name"] == "GetWeather" and isinstance(call["args"]["city"], str)
    assert emu.requests("/v1/messages")[-1]["body"]["tools"][0]["name"] == "GetWeather"
