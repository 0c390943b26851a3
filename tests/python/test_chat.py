"""Chat Completions through the official OpenAI SDK: plain, streaming, tools, structured
output, content parts, n, truncation, models -- direct to the emulator and via the gateway."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel

from conftest import EMU_KEY, MODEL, Emulator, Target, expected_cost, prompt_tokens

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
        },
    },
}
WEATHER_ARGS = {"city": "Paris", "unit": "celsius"}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}, "hour24": {"type": "boolean"}},
        },
    },
}
TIME_ARGS = {"timezone": "Paris", "hour24": True}


def as_dict(obj: Any) -> dict[str, Any]:
    # warnings=False: the gateway's `metadata` object does not fit the SDK's declared type
    # for OpenAI's own `metadata` field (a str -> str map); the raw JSON is what we check.
    return obj.to_dict(warnings=False)


def check_usage(target: Target, usage: dict[str, Any], prompt: int, completion: int) -> None:
    assert usage["prompt_tokens"] == prompt
    assert usage["completion_tokens"] == completion
    assert usage["total_tokens"] == prompt + completion
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    if target.via_gateway:
        cost = usage["cost_usd"]
        assert cost > 0
        assert abs(cost - expected_cost(prompt, completion)) <= 1e-12, (cost, expected_cost(prompt, completion))


def check_gateway_fields(target: Target, body: dict[str, Any]) -> None:
    """The routing metadata the gateway adds to every completion."""
    if not target.via_gateway:
        return
    meta = body["metadata"]
    assert meta["requested_model"] == MODEL
    assert meta["used_provider"] == "emu"
    assert meta["used_model"] in (MODEL, f"emu/{MODEL}")
    assert isinstance(meta["attempts"], list) and meta["attempts"]


def test_plain_chat(target: Target, emu: Emulator) -> None:
    system, user = "You are terse.", "hello gateway"
    resp = target.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
    )
    body = as_dict(resp)
    assert isinstance(resp.id, str) and resp.id
    assert resp.object == "chat.completion"
    assert resp.model == MODEL
    assert isinstance(resp.created, int)
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: hello gateway"
    assert choice.message.tool_calls is None
    check_usage(target, body["usage"], prompt_tokens(system, user), 4)
    check_gateway_fields(target, body)
    if not target.via_gateway:
        assert resp.id.startswith("chatcmpl-")
        assert resp.system_fingerprint == "fp_emu"
        assert body["choices"][0]["message"]["refusal"] is None


def test_stream_with_usage(target: Target, emu: Emulator) -> None:
    user = "stream me please [emu:words=12]"
    stream = target.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": user}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 12, "expected about one chunk per word"
    *deltas, last = chunks
    assert last.choices == []
    assert last.usage is not None
    for c in deltas:
        assert c.object == "chat.completion.chunk"
        assert c.usage is None
        assert len(c.choices) == 1
    assert deltas[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in deltas)
    assert text == "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
    finishes = [c.choices[0].finish_reason for c in deltas if c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert len({c.id for c in chunks}) == 1
    check_usage(target, as_dict(last.usage), prompt_tokens(user), 12)
    if target.via_gateway:
        # The routing metadata rides on the stream too (on whichever chunk the gateway picks).
        with_meta = [as_dict(c) for c in chunks if "metadata" in as_dict(c)]
        assert with_meta, "no chunk carried the gateway's routing metadata"
        check_gateway_fields(target, with_meta[-1])


def test_stream_without_usage(target: Target, emu: Emulator) -> None:
    stream = target.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "no usage please"}], stream=True
    )
    chunks = list(stream)
    assert chunks
    for c in chunks:
        assert c.usage is None, "a usage chunk reached a client that did not ask for one"
        assert len(c.choices) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: no usage please"
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "tool_choice,expected_name,expected_args",
    [
        (None, "get_weather", WEATHER_ARGS),
        ("auto", "get_weather", WEATHER_ARGS),
        ("required", "get_weather", WEATHER_ARGS),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time", TIME_ARGS),
    ],
    ids=["default", "auto", "required", "named"],
)
def test_tool_choice(target: Target, emu: Emulator, tool_choice: Any, expected_name: str, expected_args: dict) -> None:
    kwargs: dict[str, Any] = {} if tool_choice is None else {"tool_choice": tool_choice}
    resp = target.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "what is the weather?"}],
        tools=[WEATHER, TIME],
        **kwargs,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].id.startswith("call_")
    assert calls[0].function.name == expected_name
    assert json.loads(calls[0].function.arguments) == expected_args
    args_tokens = -(-len(calls[0].function.arguments) // 4)
    assert resp.usage is not None and resp.usage.completion_tokens == args_tokens
    check_gateway_fields(target, as_dict(resp))


def test_tool_choice_none_answers_text(target: Target, emu: Emulator) -> None:
    resp = target.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "just talk"}], tools=[WEATHER], tool_choice="none"
    )
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].message.content == "You said: just talk"


def test_tool_round_trip(target: Target, emu: Emulator) -> None:
    client = target.client()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool result: 18C and sunny"
    sent = emu.last_request()["body"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}


def test_parallel_tool_calls(target: Target, emu: Emulator) -> None:
    resp = target.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "both please [emu:parallel]"}], tools=[WEATHER, TIME]
    )
    calls = resp.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [WEATHER_ARGS, TIME_ARGS]
    assert calls[0].id != calls[1].id


def test_stream_tool_call_deltas(target: Target, emu: Emulator) -> None:
    stream = target.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "both, streamed [emu:parallel]"}],
        tools=[WEATHER, TIME],
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    fragments = 0
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for tc in choice.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            if tc.id:
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
                fragments += 1
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "get_weather" and calls[1]["name"] == "get_time"
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert json.loads(calls[0]["arguments"]) == WEATHER_ARGS
    assert json.loads(calls[1]["arguments"]) == TIME_ARGS
    assert fragments > 2, "arguments should arrive in several fragments"


def test_response_format_json_object(target: Target, emu: Emulator) -> None:
    resp = target.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "give me json"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(resp.choices[0].message.content) == {"echo": "give me json"}


def test_response_format_json_schema(target: Target, emu: Emulator) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "population": {"type": "integer"},
            "capital": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "size": {"type": "string", "enum": ["small", "large"]},
        },
        "required": ["city", "population", "capital", "tags", "size"],
        "additionalProperties": False,
    }
    resp = target.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "describe a city"}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
    )
    assert json.loads(resp.choices[0].message.content) == {
        "city": "Paris",
        "population": 1,
        "capital": True,
        "tags": [],
        "size": "small",
    }
    assert emu.last_request()["body"]["response_format"]["json_schema"]["schema"] == schema


class City(BaseModel):
    city: str
    population: int
    capital: bool
    tags: list[str]
    size: Literal["small", "large"]


PARIS = City(city="Paris", population=1, capital=True, tags=[], size="small")


def test_parse_pydantic_model(target: Target, emu: Emulator) -> None:
    """``chat.completions.parse`` (and its older ``beta`` spelling) sends the model's strict
    JSON schema and parses the answer back into the model."""
    client = target.client()
    for parse in (client.chat.completions.parse, client.beta.chat.completions.parse):
        resp = parse(model=MODEL, messages=[{"role": "user", "content": "describe a city"}], response_format=City)
        assert resp.choices[0].message.parsed == PARIS
        sent = emu.last_request()["body"]["response_format"]
        assert sent["type"] == "json_schema"
        assert sent["json_schema"]["name"] == "City" and sent["json_schema"]["strict"] is True
        assert sent["json_schema"]["schema"]["required"] == ["city", "population", "capital", "tags", "size"]


class GetWeather(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]


def test_parse_strict_tool_and_stream(target: Target, emu: Emulator) -> None:
    """A strict pydantic tool comes back as ``parsed_arguments``; the streaming helper
    (``chat.completions.stream``) emits content deltas in order and parses the final text."""
    client = target.client()
    resp = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "weather?"}],
        tools=[openai.pydantic_function_tool(GetWeather)],
    )
    call = resp.choices[0].message.tool_calls[0]
    assert call.function.name == "GetWeather"
    assert call.function.parsed_arguments == GetWeather(city="Paris", unit="celsius")
    assert emu.last_request()["body"]["tools"][0]["function"]["strict"] is True

    with client.chat.completions.stream(
        model=MODEL, messages=[{"role": "user", "content": "a city, streamed"}], response_format=City
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 1
    assert City.model_validate_json("".join(deltas)) == PARIS
    assert final.choices[0].message.parsed == PARIS


def test_async_client_plain_and_stream(target: Target, emu: Emulator, aio: Any) -> None:
    async def run() -> tuple[Any, list[Any]]:
        async with target.async_client() as client:
            plain = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello async"}]
            )
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "[emu:words=5] async stream"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            return plain, [c async for c in stream]

    plain, chunks = aio(run())
    assert plain.choices[0].message.content == "You said: hello async"
    assert plain.usage is not None and plain.usage.completion_tokens == 4
    *deltas, last = chunks
    assert "".join(c.choices[0].delta.content or "" for c in deltas) == "lorem ipsum dolor sit amet"
    assert deltas[-1].choices[0].finish_reason == "stop"
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 5


PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def test_content_parts_with_image(target: Target, emu: Emulator) -> None:
    content = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
    ]
    resp = target.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content == "You said: What is in this image?"
    assert emu.last_request()["body"]["messages"][0]["content"] == content


def test_n_choices(target: Target, emu: Emulator) -> None:
    resp = target.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "twice"}], n=2
    )
    assert [c.index for c in resp.choices] == [0, 1]
    assert [c.message.content for c in resp.choices] == ["You said: twice"] * 2
    assert resp.usage is not None and resp.usage.completion_tokens == 2 * 3


def test_logprobs(target: Target, emu: Emulator) -> None:
    """Token log-probabilities, plain and streamed, reach the client as the provider sent them."""
    client = target.client()
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "rate me"}], logprobs=True, top_logprobs=2
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert [t.token for t in lp.content] == ["You", " said:", " rate", " me"]
    assert all(t.logprob == -0.25 and bytes(t.bytes or []) == t.token.encode() for t in lp.content)
    assert [a.token for a in lp.content[2].top_logprobs] == [" rate", " rate~1"]
    assert [a.logprob for a in lp.content[2].top_logprobs] == [-0.25, -1.25]

    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "[emu:words=3] x"}], logprobs=True, stream=True
    )
    tokens = [t.token for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert tokens == ["lorem", " ipsum", " dolor"]

    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "no logprobs"}])
    assert plain.choices[0].logprobs is None


def test_stream_n_choices(target: Target, emu: Emulator) -> None:
    stream = target.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "[emu:words=3] twice"}],
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    text: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    chunks = list(stream)
    for c in chunks[:-1]:
        for choice in c.choices:
            text[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert text == {0: "lorem ipsum dolor", 1: "lorem ipsum dolor"}
    assert finishes == {0: "stop", 1: "stop"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


@pytest.mark.gateway
def test_stream_to_unknown_model_is_not_found(target: Target) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        for _ in target.client().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
    assert e.value.param == "model"


def test_max_tokens_truncates(target: Target, emu: Emulator) -> None:
    client = target.client()
    for kwargs in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        resp = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "one two three four"}], **kwargs
        )
        assert resp.choices[0].message.content == "You said: one"
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage is not None and resp.usage.completion_tokens == 3


@pytest.mark.parametrize("stop", ["three", ["nine", "three", "four"]], ids=["string", "list"])
def test_stop(target: Target, emu: Emulator, stop: Any) -> None:
    resp = target.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "one two three four"}], stop=stop
    )
    assert resp.choices[0].message.content == "You said: one two "
    assert resp.choices[0].finish_reason == "stop"


def test_models_list(target: Target) -> None:
    ids = [m.id for m in target.client().models.list()]
    assert MODEL in ids


def test_models_retrieve(target: Target) -> None:
    client = target.client()
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.status_code == 404


@pytest.mark.gateway
def test_emulator_sees_provider_key_only(target: Target, emu: Emulator) -> None:
    target.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "whose key?"}])
    req = emu.last_request()
    assert req["headers"]["authorization"] == f"Bearer {EMU_KEY}"
    assert target.api_key not in json.dumps(req), "the client's gateway key reached the provider"


def test_client_disconnect_cancels_upstream(target: Target, emu: Emulator) -> None:
    """A client that drops a stream early cancels the upstream call (the emulator sees its
    stream dropped before the end)."""
    stream = target.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "[emu:words=200][emu:chunk_delay_ms=50] long story"}],
        stream=True,
    )
    it = iter(stream)
    for _ in range(3):
        next(it)
    stream.close()
    deadline = time.monotonic() + 5
    outcome = None
    while time.monotonic() < deadline:
        outcome = emu.last_request()["outcome"]
        if outcome == "cancelled":
            break
        time.sleep(0.05)
    assert outcome == "cancelled"


def test_upstream_abort_mid_stream_is_an_error(target: Target, emu: Emulator) -> None:
    stream = target.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "[emu:words=50][emu:abort_mid_stream] broken"}],
        stream=True,
    )
    text = ""
    with pytest.raises(Exception):
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert len(text.split()) < 50
