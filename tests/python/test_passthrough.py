"""Every request parameter reaches the provider exactly as the client sent it, and nothing the
client did not send is added (except `stream_options` on streams, which a gateway may set to
meter usage). The body the SDK sent is captured with an HTTP event hook and compared with the
body the emulator recorded."""

from __future__ import annotations

import json
from typing import Any

import httpx2  # the HTTP client the openai SDK is built on
import pytest

from conftest import MODEL, Emulator, Target
from test_chat import TIME, WEATHER

CASES: dict[str, dict[str, Any]] = {
    "sampling": {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 50,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "seed": 42,
        "user": "end-user-123",
        "logprobs": True,
        "top_logprobs": 2,
        "logit_bias": {"50256": -100, "1734": 5},
    },
    "completion-limits": {
        "max_completion_tokens": 64,
        "stop": "zzz",
        "metadata": {"purpose": "conformance", "run": "1"},
        "reasoning_effort": "low",
        "temperature": 0,
        "n": 1,
    },
    "stop-list": {"stop": ["zzz", "yyy"], "top_p": 1, "temperature": 1.3},
    "tools": {
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "parallel_tool_calls": False,
    },
    "response-format": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "string"}},
                    "required": ["b", "a"],
                    "additionalProperties": False,
                },
            },
        },
        "seed": 9007199254740993,  # above 2^53: survives only if never turned into a float
    },
    "stream": {"stream": True, "temperature": 0.2, "max_tokens": 20},
    "stream-with-usage": {"stream": True, "stream_options": {"include_usage": True}, "frequency_penalty": 1.5},
}


def capturing_client(target: Target, sent: list[dict[str, Any]]):
    def hook(request: httpx2.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            sent.append(json.loads(request.content))

    return target.client(http_client=httpx2.Client(event_hooks={"request": [hook]}))


@pytest.mark.parametrize("case", list(CASES))
def test_parameters_arrive_as_sent(target: Target, emu: Emulator, case: str) -> None:
    sent: list[dict[str, Any]] = []
    client = capturing_client(target, sent)
    messages = [
        {"role": "system", "content": "You are a test."},
        {"role": "user", "content": f"passthrough {case}"},
    ]
    kwargs = CASES[case]
    resp = client.chat.completions.create(model=MODEL, messages=messages, **kwargs)
    if kwargs.get("stream"):
        for _ in resp:
            pass
    assert len(sent) == 1
    client_body = sent[0]
    # The SDK sends what it was given; this keeps the test honest about what "sent" is.
    assert client_body == {"model": MODEL, "messages": messages, **kwargs}

    upstream = dict(emu.last_request()["body"])
    if kwargs.get("stream") and "stream_options" not in kwargs:
        upstream.pop("stream_options", None)
    elif kwargs.get("stream"):
        # The client's own stream options must survive (a gateway may only add to them).
        for k, v in kwargs["stream_options"].items():
            assert upstream["stream_options"].get(k) == v
        upstream["stream_options"] = kwargs["stream_options"]
    added = sorted(set(upstream) - set(client_body))
    missing = sorted(set(client_body) - set(upstream))
    assert not added, f"fields the client did not send reached the provider: {added}"
    assert not missing, f"fields the client sent did not reach the provider: {missing}"
    for key, value in client_body.items():
        assert same(upstream[key], value), f"{key}: sent {value!r}, provider got {upstream[key]!r}"


def same(a: Any, b: Any) -> bool:
    """JSON equality where numbers compare by value (0 == 0.0, exactly, so no precision may
    be lost) but a boolean never equals a number, and key order does not matter."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b
