"""The official ``anthropic`` SDK and LangChain's ``ChatAnthropic`` against the gateway's
``/v1/messages``: each test runs to an OpenAI-type model and to an anthropic-type one
(the emulator serves both wire formats), through one process and five."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel, Field

from conftest import CLAUDE, MAX_BODY_BYTES, MODEL, Emulator, Target

pytestmark = pytest.mark.gateway

MODELS = pytest.mark.parametrize("model", [MODEL, CLAUDE])

WEATHER = [
    {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city"}},
            "required": ["city"],
        },
    }
]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


@MODELS
def test_create(target: Target, emu: Emulator, model: str) -> None:
    msg = target.anthropic().messages.create(
        model=model,
        max_tokens=64,
        system=[{"type": "text", "text": "be brief"}],
        messages=[user("hello sdk")],
        metadata={"user_id": "u-1"},
    )
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "You said: hello sdk"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert msg._request_id and msg._request_id.startswith("req_")


@MODELS
def test_stream(target: Target, emu: Emulator, model: str) -> None:
    with target.anthropic().messages.stream(
        model=model, max_tokens=64, messages=[user("stream [emu:words=7] this")]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "lorem ipsum dolor sit amet consectetur adipiscing"
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 7
    assert final.usage.input_tokens > 0


@MODELS
def test_tools_round_trip(target: Target, emu: Emulator, model: str) -> None:
    client = target.anthropic()
    question = user("weather in Paris?")
    first = client.messages.create(model=model, max_tokens=256, tools=WEATHER, messages=[question])
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert isinstance(call.input["city"], str)
    second = client.messages.create(
        model=model,
        max_tokens=256,
        tools=WEATHER,
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"
    assert not [b for b in second.content if b.type == "tool_use"]


@MODELS
def test_stream_forced_tool(target: Target, emu: Emulator, model: str) -> None:
    with target.anthropic().messages.stream(
        model=model,
        max_tokens=256,
        tools=WEATHER,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[user("stream a tool call")],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.name == "get_weather"
    assert isinstance(call.input["city"], str)


@MODELS
def test_raw_stream_event_order(target: Target, emu: Emulator, model: str) -> None:
    """``create(stream=True)`` yields Anthropic's events in their order: one message_start,
    then per block a start, its deltas and a stop, then message_delta and message_stop."""
    events = list(
        target.anthropic().messages.create(
            model=model, max_tokens=64, messages=[user("[emu:words=4] raw")], stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    body = kinds[1:-2]
    body = [k for k in body if k != "ping"]
    assert body[0] == "content_block_start" and body[-1] == "content_block_stop"
    assert set(body[1:-1]) == {"content_block_delta"} and len(body) >= 2 + 4
    assert events[0].message.role == "assistant" and events[0].message.content == []
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "lorem ipsum dolor sit"
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == 4


@MODELS
def test_async_create_and_stream(target: Target, emu: Emulator, aio: Any, model: str) -> None:
    async def run() -> tuple[Any, str, Any]:
        async with target.async_anthropic() as client:
            msg = await client.messages.create(model=model, max_tokens=64, messages=[user("hello async")])
            async with client.messages.stream(
                model=model, max_tokens=64, messages=[user("[emu:words=5] async stream")]
            ) as stream:
                text = "".join([t async for t in stream.text_stream])
                final = await stream.get_final_message()
        return msg, text, final

    msg, text, final = aio(run())
    assert msg.content[0].text == "You said: hello async"
    assert text == "lorem ipsum dolor sit amet"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5


PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@MODELS
def test_image_block(target: Target, emu: Emulator, model: str) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    msg = target.anthropic().messages.create(
        model=model,
        max_tokens=64,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "what is this?"}]}],
    )
    assert msg.content[0].text == "You said: what is this?"
    if model == CLAUDE:
        sent = emu.requests("/v1/messages")[-1]["body"]["messages"][0]["content"]
        assert sent[0] == image
    else:
        sent = emu.last_request()["body"]["messages"][0]["content"]
        assert sent[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}
        assert sent[1] == {"type": "text", "text": "what is this?"}


@MODELS
def test_max_tokens_stop_reason(target: Target, emu: Emulator, model: str) -> None:
    client = target.anthropic()
    msg = client.messages.create(model=model, max_tokens=2, messages=[user("one two three four")])
    assert msg.stop_reason == "max_tokens"
    assert msg.content[0].text == "You said:" and msg.usage.output_tokens == 2
    with client.messages.stream(model=model, max_tokens=3, messages=[user("[emu:words=9] x")]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens" and final.content[0].text == "lorem ipsum dolor"


@MODELS
def test_stream_two_tool_blocks(target: Target, emu: Emulator, model: str) -> None:
    """Two tool calls in one streamed answer arrive as two tool_use blocks, each opened,
    filled with input_json deltas and closed before the next."""
    tools = [*WEATHER, {"name": "get_time", "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}}}]
    events = list(
        target.anthropic().messages.create(
            model=model, max_tokens=256, tools=tools, messages=[user("[emu:parallel] both")], stream=True
        )
    )
    blocks = [e for e in events if e.type in ("content_block_start", "content_block_stop")]
    tool_starts = [e for e in blocks if e.type == "content_block_start" and e.content_block.type == "tool_use"]
    assert [e.content_block.name for e in tool_starts] == ["get_weather", "get_time"]
    order = [(e.type, e.index) for e in blocks]
    assert order == [(k, i) for i in sorted({e.index for e in blocks}) for k in ("content_block_start", "content_block_stop")]
    parts: dict[int, str] = {}
    for e in events:
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta":
            parts[e.index] = parts.get(e.index, "") + e.delta.partial_json
    assert json.loads(parts[tool_starts[0].index])["city"]
    assert events[-2].delta.stop_reason == "tool_use"


def test_thinking_and_stop_sequence(target: Target, emu: Emulator) -> None:
    client = target.anthropic()
    with client.messages.stream(
        model=CLAUDE,
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[user("think aloud")],
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert "think aloud" in final.content[0].thinking and final.content[0].signature
    assert final.content[1].text == "You said: think aloud"
    msg = client.messages.create(
        model=CLAUDE, max_tokens=64, stop_sequences=["STOP"], messages=[user("one two STOP three")]
    )
    assert msg.stop_reason == "stop_sequence"
    assert msg.stop_sequence == "STOP"


@pytest.mark.parametrize(
    "model,directive", [(CLAUDE, "[emu:error_mid_stream]"), (MODEL, "[emu:words=40][emu:abort_mid_stream]")]
)
def test_stream_failure_raises(target: Target, emu: Emulator, model: str, directive: str) -> None:
    """An upstream error event (Anthropic) or a broken-off stream (OpenAI) mid-answer
    reaches the SDK as an ``error`` event, which it raises."""
    text = ""
    with pytest.raises(anthropic.APIStatusError) as e:
        with target.anthropic().messages.stream(
            model=model, max_tokens=64, messages=[user(f"{directive} fail")]
        ) as stream:
            for piece in stream.text_stream:
                text += piece
    assert e.value.body["error"]["type"] == "api_error"
    assert len(text.split()) < 40


def test_errors_raise_the_sdk_exceptions(target: Target, emu: Emulator) -> None:
    ask = {"max_tokens": 16, "messages": [user("x")]}
    with pytest.raises(anthropic.AuthenticationError) as e:
        target.anthropic(api_key="sk-not-a-key").messages.create(model=MODEL, **ask)
    assert e.value.status_code == 401
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as e:
        target.anthropic().messages.create(model="no-such-model", **ask)
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        target.anthropic().messages.create(model=MODEL, max_tokens=16, messages=[user("x")], extra_body={"temperature": 1.5})
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert e.value.body["error"]["message"].startswith("temperature")
    with pytest.raises(anthropic.RateLimitError):
        target.anthropic().messages.create(model=CLAUDE, max_tokens=16, messages=[user("[emu:status=429] x")])
    with pytest.raises(anthropic.ContentTooLargeError) as e:
        target.anthropic().messages.create(model=CLAUDE, max_tokens=16, messages=[user("x" * MAX_BODY_BYTES)])
    assert e.value.status_code == 413
    assert e.value.body["error"]["type"] == "request_too_large"


@MODELS
def test_count_tokens(target: Target, model: str) -> None:
    client = target.anthropic()
    short = client.messages.count_tokens(model=model, messages=[user("hi")])
    long = client.messages.count_tokens(model=model, messages=[user("word " * 100)], tools=WEATHER)
    assert 0 < short.input_tokens < long.input_tokens


def test_models_list(target: Target) -> None:
    client = target.anthropic()
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids and CLAUDE in ids
    assert all(m.type == "model" and m.created_at.year >= 1970 for m in models.data)
    assert client.models.retrieve(CLAUDE).id == CLAUDE
    with pytest.raises(anthropic.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["error"]["type"] == "not_found_error"


def text_of(content: str | list) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def chat_anthropic(target: Target, model: str) -> ChatAnthropic:
    return ChatAnthropic(
        model=model,
        base_url=target.anthropic_base_url,
        api_key=target.api_key,
        max_retries=0,
        timeout=30,
        max_tokens=256,
    )


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(description="the city")


@MODELS
def test_langchain_bind_tools_round_trip(target: Target, emu: Emulator, model: str) -> None:
    llm = chat_anthropic(target, model).bind_tools([GetWeather])
    question = HumanMessage("weather in Paris?")
    first = llm.invoke([question])
    assert [c["name"] for c in first.tool_calls] == ["GetWeather"]
    call = first.tool_calls[0]
    assert isinstance(call["args"]["city"], str) and call["id"]
    second = llm.invoke([question, first, ToolMessage("sunny", tool_call_id=call["id"])])
    assert not second.tool_calls
    assert text_of(second.content)


@MODELS
def test_langchain_structured_output(target: Target, emu: Emulator, model: str) -> None:
    out = chat_anthropic(target, model).with_structured_output(GetWeather).invoke("weather in Paris?")
    assert isinstance(out, GetWeather) and isinstance(out.city, str) and out.city


@MODELS
def test_langchain_async(target: Target, emu: Emulator, aio: Any, model: str) -> None:
    llm = chat_anthropic(target, model)

    async def run() -> tuple[AIMessage, list[Any]]:
        return await llm.ainvoke("hello async"), [p async for p in llm.astream("[emu:words=6] astream")]

    msg, pieces = aio(run())
    assert text_of(msg.content) == "You said: hello async"
    assert len(pieces) >= 6
    assert "".join(text_of(p.content) for p in pieces) == "lorem ipsum dolor sit amet consectetur"


@MODELS
def test_langchain_invoke_and_stream(target: Target, emu: Emulator, model: str) -> None:
    llm = ChatAnthropic(
        model=model,
        base_url=target.anthropic_base_url,
        api_key=target.api_key,
        max_retries=0,
        timeout=30,
        max_tokens=64,
    )
    msg = llm.invoke("hello langchain")
    assert isinstance(msg, AIMessage)
    assert text_of(msg.content) == "You said: hello langchain"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] > 0
    pieces = list(llm.stream("stream [emu:words=7] this"))
    assert len(pieces) >= 7
    assert "".join(text_of(p.content) for p in pieces) == "lorem ipsum dolor sit amet consectetur adipiscing"
