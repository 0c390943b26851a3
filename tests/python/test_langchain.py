"""LangChain's ChatOpenAI against the same targets: invoke, stream, bind_tools."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from conftest import MODEL, Emulator, Target


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
