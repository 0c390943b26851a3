"""The translation matrix's machinery: the providers (rows), the capabilities (columns),
one gateway configured with a platform model per provider, and how one cell is run and
classified. The declarations (which cells are refused by design, which are known bugs) and
the table live in ``test_matrix.py``.

Every provider points at the one emulator, which speaks each wire format on its own paths.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import httpx
import openai

from conftest import (
    EMU_KEY,
    SPLIT_SERVICES,
    Emulator,
    Gateway,
    _binary,
    free_port,
    stop,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parents[2]
VERTEX_KEY_PEM = ROOT / "tests/emulators/src/gemini/test-service-account-key.pem"
PRICE = "{ input_per_mtok: 1.0, output_per_mtok: 2.0 }"
NOT_IN_BUILD = "not supported by this build"


# ---------------------------------------------------------------------------------------
# Rows: one provider each, all against the emulator
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    id: str  # the row's key in declarations and the table: the provider type
    label: str  # what the table shows
    name: str  # the provider's name in the gateway config (the one its errors name)
    provider_yaml: str  # the rest of the provider entry, after `name` and `type`
    chat_model: str  # upstream model (or Azure deployment) for chat
    embed_model: str  # upstream model (or Azure deployment) for embeddings
    chat_path: str  # where the emulator must see this row's chat calls (a prefix; "" = unchecked)

    @property
    def type(self) -> str:
        return self.id

    @property
    def chat(self) -> str:
        """The platform model clients ask for."""
        return f"chat-{self.name}"

    @property
    def embed(self) -> str:
        return f"embed-{self.name}"


ROWS: list[Row] = [
    Row("openai", "openai", "oa", "base_url: http://{emu}/v1\n    api_key: ${EMU_KEY}", "gpt-4o-mini", "text-embedding-3-small", "/v1/chat/completions"),
    Row(
        "azure-openai",
        "azure-openai",
        "az",
        "base_url: http://{emu}\n    api_key: ${EMU_KEY}",
        "my-deployment",
        "my-embedding-deployment",
        "/openai/deployments/my-deployment/chat/completions?api-version=",
    ),
    Row("anthropic", "anthropic", "claude", "base_url: http://{emu}/v1\n    api_key: ${EMU_KEY}", "claude-3-5-sonnet-20241022", "claude-3-5-haiku", "/v1/messages"),
    Row("google", "google (AI Studio)", "gem", "base_url: http://{emu}/v1beta\n    api_key: ${EMU_KEY}", "gemini-1.5-flash", "text-embedding-004", "/v1beta/models/gemini-1.5-flash:generateContent"),
    Row(
        "vertex-ai",
        "vertex-ai",
        "vx",
        "base_url: http://{emu}/v1\n    project_id: proj-1\n    location: us-central1\n    credentials: ${VX_CREDENTIALS}",
        "gemini-2.0-flash",
        "text-embedding-004",
        "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent",
    ),
    Row("mistral", "mistral", "mi", "base_url: http://{emu}/mistral/v1\n    api_key: ${EMU_KEY}", "mistral-small-latest", "mistral-embed", "/mistral/v1/chat/completions"),
    Row("ollama", "ollama", "ol", "base_url: http://{emu}\n    api_key: ${EMU_KEY}", "llama3.2", "nomic-embed-text", "/api/chat"),
    Row(
        "groq",
        "groq (OpenAI-compatible host)",
        "gq",
        "base_url: http://{emu}/v1\n    api_key: ${EMU_KEY}",
        "llama-3.1-8b-instant",
        "text-embedding-3-small",
        "/v1/chat/completions",
    ),
    Row(
        "bedrock",
        "bedrock",
        "br",
        "base_url: http://{emu}\n    region: us-east-1\n    access_key_id: AKIDEXAMPLE\n    secret_access_key: ${EMU_KEY}",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        "amazon.titan-embed-text-v2:0",
        "",  # its emulator paths are not known here yet
    ),
]
ROW_IDS = [r.id for r in ROWS]
OPTIONAL_ROWS = {"bedrock"}  # rows whose provider type a build may not have yet


def vertex_credentials(emu: Emulator) -> str:
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "proj-1",
            "private_key": VERTEX_KEY_PEM.read_text(),
            "client_email": "gateway@proj-1.iam.gserviceaccount.com",
            "token_uri": f"{emu.url}/token",
        }
    )


def write_config(path: Path, data_dir: Path, emu: Emulator, rows: list[Row], mode: str) -> str:
    http_addr = f"127.0.0.1:{free_port()}"
    host = emu.url.removeprefix("http://")
    providers = "".join(
        f"  - name: {r.name}\n    type: {r.type}\n    {r.provider_yaml.replace('{emu}', host)}\n" for r in rows
    )
    models = "".join(
        # The matrix measures each provider type's translation, not a model's limits: the
        # chat models claim every capability, so the router's catalog never refuses first.
        f"  - name: {r.chat}\n    target: {r.name}/{r.chat_model}\n    price: {PRICE}\n"
        f"    capabilities: [tools, vision, json_schema, streaming]\n"
        f"  - name: {r.embed}\n    target: {r.name}/{r.embed_model}\n    price: {PRICE}\n"
        for r in rows
    )
    text = (
        f"data_dir: {data_dir}\nedge:\n  http_addr: {http_addr}\n  grpc_addr: 127.0.0.1:{free_port()}\n"
        f"providers:\n{providers}models:\n{models}"
    )
    if mode == "split":
        text += "services:\n" + "".join(f"  {s}:\n    addr: 127.0.0.1:{free_port()}\n" for s in SPLIT_SERVICES)
    path.write_text(text)
    return http_addr


@dataclasses.dataclass
class MatrixGateway:
    gateway: Gateway
    key: str
    rows: list[Row]  # the rows this build serves
    missing: set[str]  # optional rows this build does not have

    @property
    def base_url(self) -> str:
        return f"http://{self.gateway.http_addr}/v1"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.key, max_retries=0, timeout=30)

    def close(self) -> None:
        for proc in reversed(self.gateway.procs):
            stop(proc)


def _launch(mode: str, emu: Emulator, tmp: Path, rows: list[Row]) -> tuple[Gateway, str]:
    binary = _binary("LLMGW_BIN")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = tmp / "gateway.yaml"
    http_addr = write_config(config, tmp / "data", emu, rows, mode)
    env = {**os.environ, "EMU_KEY": EMU_KEY, "VX_CREDENTIALS": vertex_credentials(emu)}
    gw = Gateway(mode=mode, binary=binary, config=config, env=env, http_addr=http_addr, procs=[], logs=[])
    key = gw.create_key("matrix")
    for role in ["all"] if mode == "all" else [*SPLIT_SERVICES, "edge"]:
        log = tmp / f"llmgw-{role}.log"
        gw.logs.append(log)
        out = open(log, "wb")
        gw.procs.append(subprocess.Popen([binary, role, "--config", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT))
    try:
        wait_healthy(gw)
    except BaseException:
        for proc in reversed(gw.procs):
            stop(proc)
        raise
    return gw, key


def start_matrix_gateway(mode: str, emu: Emulator, tmp: Path, missing: set[str] | None = None) -> MatrixGateway:
    """Starts one gateway serving every row. When `missing` is None, optional rows are
    probed: a start-up that fails with "not supported by this build" naming an optional
    row's provider drops that row and starts again without it."""
    missing = set(missing or ())
    while True:
        rows = [r for r in ROWS if r.id not in missing]
        try:
            gw, key = _launch(mode, emu, tmp, rows)
            return MatrixGateway(gateway=gw, key=key, rows=rows, missing=missing)
        except RuntimeError as e:
            text = str(e)
            dropped = [
                r.id for r in rows if r.id in OPTIONAL_ROWS and NOT_IN_BUILD in text and f"`{r.name}`" in text
            ]
            if not dropped:
                raise
            missing.update(dropped)


# ---------------------------------------------------------------------------------------
# One cell
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    """What a capability check gets."""

    row: Row
    client: openai.OpenAI
    emu: Emulator
    tag: str  # a word unique to this cell, put in the prompt to find its upstream request

    @property
    def model(self) -> str:
        return self.row.chat

    def upstream(self) -> dict[str, Any]:
        """The last request the emulator got that carries this cell's tag."""
        r = httpx.get(f"{self.emu.url}/_emu/requests", timeout=10)
        r.raise_for_status()
        mine = [x for x in r.json() if self.tag in json.dumps(x.get("body"))]
        assert mine, f"the emulator saw no request carrying {self.tag!r}"
        return mine[-1]


class Refused(Exception):
    """The gateway answered a clean 400: `param` named, the provider named in the message."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"400 param={param!r}: {message}")
        self.param = param
        self.message = message


@dataclasses.dataclass(frozen=True)
class Outcome:
    kind: str  # "pass" | "by_design" | "fail"
    param: str | None = None  # for by_design: the param the 400 named
    detail: str = ""


def run_cell(check: Callable[[Cell], None], cell: Cell) -> Outcome:
    try:
        try:
            check(cell)
        except openai.BadRequestError as e:
            body = e.body if isinstance(e.body, dict) else {}
            param, message = body.get("param"), str(body.get("message") or "")
            if isinstance(param, str) and param and f"`{cell.row.name}`" in message:
                raise Refused(param, message) from e
            raise
    except Refused as r:
        try:
            reached = cell.upstream()
        except AssertionError:
            return Outcome("by_design", param=r.param, detail=r.message)
        return Outcome("fail", detail=f"{r} -- but the request reached the provider: {reached['path']}")
    except openai.APIStatusError as e:
        return Outcome("fail", detail=f"HTTP {e.status_code}: {json.dumps(e.body)[:600]}")
    except Exception as e:  # noqa: BLE001 -- every other failure is a failed cell
        return Outcome("fail", detail=f"{type(e).__name__}: {str(e)[:600]}")
    return Outcome("pass")


# ---------------------------------------------------------------------------------------
# Columns: the capabilities
# ---------------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
    },
}
PIXEL_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
IMAGE_URL = "https://example.invalid/cat.png"  # .invalid never resolves (RFC 2606)
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}, "capital": {"type": "boolean"}},
    "required": ["city", "population", "capital"],
    "additionalProperties": False,
}


def as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict(warnings=False)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def check_routed(cell: Cell, resp: Any) -> None:
    meta = as_dict(resp).get("metadata") or {}
    assert meta.get("used_provider") == cell.row.name, f"routed to {meta.get('used_provider')!r}"


def check_echo(cell: Cell, resp: Any, text: str) -> None:
    assert len(resp.choices) == 1, f"{len(resp.choices)} choices"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == f"You said: {text}", repr(choice.message.content)
    assert choice.finish_reason == "stop", choice.finish_reason
    assert not choice.message.tool_calls
    check_routed(cell, resp)


def only_call(resp: Any) -> Any:
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice.finish_reason
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1, calls
    call = calls[0]
    assert call.type == "function" and call.id, call
    return call


def check_args(call: Any, name: str) -> dict[str, Any]:
    assert call.function.name == name, call.function.name
    args = json.loads(call.function.arguments)
    key = "city" if name == "get_weather" else "timezone"
    assert isinstance(args, dict) and isinstance(args.get(key), str) and args[key], args
    return args


def find_key(obj: Any, keys: tuple[str, ...]) -> list[Any]:
    """Every value under any of `keys`, anywhere in `obj`."""
    found: list[Any] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys:
                found.append(v)
            found.extend(find_key(v, keys))
    elif isinstance(obj, list):
        for v in obj:
            found.extend(find_key(v, keys))
    return found


def cap_text(c: Cell) -> None:
    text = f"hello {c.tag}"
    resp = c.client.chat.completions.create(model=c.model, messages=user(text))
    check_echo(c, resp, text)
    assert resp.object == "chat.completion" and resp.id
    u = resp.usage
    assert u is not None and u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    # The provider's own wire format, on its own path.
    path = c.upstream()["path"]
    assert path.startswith(c.row.chat_path), f"the emulator saw {path}, expected {c.row.chat_path}..."


def cap_system_developer(c: Cell) -> None:
    text = f"hi {c.tag}"
    resp = c.client.chat.completions.create(
        model=c.model,
        messages=[
            {"role": "system", "content": "SYSTEM-RULE be brief"},
            {"role": "developer", "content": "DEVELOPER-RULE answer in English"},
            {"role": "user", "content": text},
        ],
    )
    check_echo(c, resp, text)
    sent = json.dumps(c.upstream()["body"])
    assert "SYSTEM-RULE be brief" in sent and "DEVELOPER-RULE answer in English" in sent, sent[:400]


def cap_multi_turn(c: Cell) -> None:
    first, second = f"first {c.tag}", "second turn"
    resp = c.client.chat.completions.create(
        model=c.model,
        messages=[
            {"role": "user", "content": first},
            {"role": "assistant", "content": f"You said: {first}"},
            {"role": "user", "content": second},
        ],
    )
    check_echo(c, resp, second)
    sent = json.dumps(c.upstream()["body"])
    assert sent.count(first) == 2 and second in sent, sent[:400]


def cap_tool_auto(c: Cell) -> None:
    resp = c.client.chat.completions.create(
        model=c.model, messages=user(f"weather in Paris? {c.tag}"), tools=[WEATHER], tool_choice="auto"
    )
    assert resp.choices[0].message.content in (None, "")
    check_args(only_call(resp), "get_weather")
    check_routed(c, resp)


def cap_tool_required(c: Cell) -> None:
    resp = c.client.chat.completions.create(
        model=c.model, messages=user(f"weather in Paris? {c.tag}"), tools=[WEATHER, TIME], tool_choice="required"
    )
    call = only_call(resp)
    check_args(call, call.function.name)
    assert call.function.name in ("get_weather", "get_time")


def cap_tool_named(c: Cell) -> None:
    resp = c.client.chat.completions.create(
        model=c.model,
        messages=user(f"weather in Paris? {c.tag}"),
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    check_args(only_call(resp), "get_time")


def cap_tool_none(c: Cell) -> None:
    text = f"just talk {c.tag}"
    resp = c.client.chat.completions.create(model=c.model, messages=user(text), tools=[WEATHER], tool_choice="none")
    check_echo(c, resp, text)


def cap_tool_round_trip(c: Cell) -> None:
    question = f"weather in Paris? {c.tag}"
    first = c.client.chat.completions.create(model=c.model, messages=user(question), tools=[WEATHER])
    call = only_call(first)
    check_args(call, "get_weather")
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": question},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
    ]
    second = c.client.chat.completions.create(model=c.model, messages=messages, tools=[WEATHER])
    content = second.choices[0].message.content or ""
    assert second.choices[0].finish_reason == "stop", second.choices[0].finish_reason
    assert content.startswith("Tool result:") and "18C and sunny" in content, repr(content)


def stream_chunks(c: Cell, **kw: Any) -> list[Any]:
    return list(c.client.chat.completions.create(model=c.model, stream=True, **kw))


def cap_stream_text(c: Cell) -> None:
    text = f"stream me {c.tag}"
    chunks = stream_chunks(c, messages=user(text))
    assert len(chunks) > 2, f"{len(chunks)} chunks"
    got = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert got == f"You said: {text}", repr(got)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["stop"], finishes
    assert all(ch.usage is None for ch in chunks), "usage reached a client that did not ask"


def cap_stream_tool_args(c: Cell) -> None:
    chunks = stream_chunks(c, messages=user(f"weather in Paris? {c.tag}"), tools=[WEATHER])
    name, args, ids, finish = "", "", set(), None
    for ch in chunks:
        if not ch.choices:
            continue
        finish = ch.choices[0].finish_reason or finish
        for tc in ch.choices[0].delta.tool_calls or []:
            assert tc.index == 0, tc.index
            if tc.id:
                ids.add(tc.id)
            if tc.function and tc.function.name:
                name += tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
    assert finish == "tool_calls", finish
    assert name == "get_weather", name
    assert len(ids) == 1, ids
    parsed = json.loads(args)
    assert isinstance(parsed.get("city"), str) and parsed["city"], parsed


def cap_vision(c: Cell, url: str, needle: str) -> None:
    text = f"what is in this image? {c.tag}"
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    resp = c.client.chat.completions.create(model=c.model, messages=[{"role": "user", "content": content}])
    check_echo(c, resp, text)
    sent = json.dumps(c.upstream()["body"])
    assert needle in sent, f"the image did not reach the provider: {sent[:400]}"


def cap_vision_url(c: Cell) -> None:
    cap_vision(c, IMAGE_URL, IMAGE_URL)


def cap_vision_base64(c: Cell) -> None:
    cap_vision(c, f"data:image/png;base64,{PIXEL_B64}", PIXEL_B64)


def cap_json_object(c: Cell) -> None:
    resp = c.client.chat.completions.create(
        model=c.model, messages=user(f"answer in json {c.tag}"), response_format={"type": "json_object"}
    )
    parsed = json.loads(resp.choices[0].message.content or "")
    assert isinstance(parsed, dict), parsed
    assert resp.choices[0].finish_reason == "stop"
    assert not resp.choices[0].message.tool_calls
    # The provider was asked for JSON, in its own words.
    sent = json.dumps(c.upstream()["body"])
    asks = ('"json_object"', '"application/json"', '"json_response"', '"format": "json"')
    assert any(a in sent for a in asks), sent[:400]


def cap_json_schema(c: Cell) -> None:
    resp = c.client.chat.completions.create(
        model=c.model,
        messages=user(f"describe a city {c.tag}"),
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}},
    )
    parsed = json.loads(resp.choices[0].message.content or "")
    assert set(parsed) == {"city", "population", "capital"}, parsed
    assert isinstance(parsed["city"], str)
    assert isinstance(parsed["population"], int) and not isinstance(parsed["population"], bool)
    assert isinstance(parsed["capital"], bool)
    assert resp.choices[0].finish_reason == "stop"
    assert not resp.choices[0].message.tool_calls


def cap_stop(c: Cell) -> None:
    resp = c.client.chat.completions.create(
        model=c.model, messages=user(f"one two three four {c.tag}"), stop=["three"]
    )
    content = resp.choices[0].message.content or ""
    assert content.rstrip() == "You said: one two", repr(content)
    assert resp.choices[0].finish_reason == "stop", resp.choices[0].finish_reason
    sent = c.upstream()["body"]
    assert ["three"] in find_key(sent, ("stop", "stop_sequences", "stopSequences")) or "three" in find_key(
        sent, ("stop",)
    ), json.dumps(sent)[:400]


def cap_seed(c: Cell) -> None:
    text = f"seeded {c.tag}"
    resp = c.client.chat.completions.create(model=c.model, messages=user(text), seed=4242)
    check_echo(c, resp, text)
    sent = c.upstream()["body"]
    assert 4242 in find_key(sent, ("seed", "random_seed")), json.dumps(sent)[:400]


def cap_n2(c: Cell) -> None:
    text = f"twice {c.tag}"
    resp = c.client.chat.completions.create(model=c.model, messages=user(text), n=2)
    assert [ch.index for ch in resp.choices] == [0, 1], [ch.index for ch in resp.choices]
    assert [ch.message.content for ch in resp.choices] == [f"You said: {text}"] * 2
    assert [ch.finish_reason for ch in resp.choices] == ["stop", "stop"]


def cap_finish_length(c: Cell) -> None:
    resp = c.client.chat.completions.create(
        model=c.model, messages=user(f"[emu:words=40] tell a long story {c.tag}"), max_tokens=5
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "length", choice.finish_reason
    words = (choice.message.content or "").split()
    assert 0 < len(words) <= 5, repr(choice.message.content)
    assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 5, resp.usage


def cap_stream_usage(c: Cell) -> None:
    text = f"count me {c.tag}"
    chunks = stream_chunks(c, messages=user(text), stream_options={"include_usage": True})
    got = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert got == f"You said: {text}", repr(got)
    last = chunks[-1]
    assert last.choices == [], "the usage chunk carries no choices"
    assert all(ch.usage is None for ch in chunks[:-1]), "usage before the last chunk"
    u = as_dict(last)["usage"]
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0, u
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
    want = u["prompt_tokens"] * 1.0 / 1e6 + u["completion_tokens"] * 2.0 / 1e6
    assert abs(u["cost_usd"] - want) < 1e-12, u


def cap_embeddings(c: Cell) -> None:
    resp = c.client.embeddings.create(model=c.row.embed, input=[f"hello {c.tag}", "second input"], encoding_format="float")
    assert [d.index for d in resp.data] == [0, 1]
    a, b = resp.data[0].embedding, resp.data[1].embedding
    assert len(a) == len(b) and len(a) > 0
    assert all(isinstance(x, float) for x in a)
    assert a != b
    assert resp.usage.prompt_tokens > 0
    # The SDK's default (base64) decodes to the same vector.
    again = c.client.embeddings.create(model=c.row.embed, input=f"hello {c.tag}")
    assert len(again.data[0].embedding) == len(a)
    assert all(abs(x - y) <= 1e-6 * max(1.0, abs(x)) for x, y in zip(a, again.data[0].embedding))


@dataclasses.dataclass(frozen=True)
class Capability:
    id: str
    label: str
    check: Callable[[Cell], None]


CAPABILITIES: list[Capability] = [
    Capability("text", "text", cap_text),
    Capability("system_developer", "system + developer", cap_system_developer),
    Capability("multi_turn", "multi-turn", cap_multi_turn),
    Capability("tool_auto", "tool call (auto)", cap_tool_auto),
    Capability("tool_required", "tool_choice required", cap_tool_required),
    Capability("tool_named", "tool_choice named", cap_tool_named),
    Capability("tool_none", "tool_choice none", cap_tool_none),
    Capability("tool_round_trip", "tool result round trip", cap_tool_round_trip),
    Capability("stream_text", "streamed text", cap_stream_text),
    Capability("stream_tool_args", "streamed tool-call arguments", cap_stream_tool_args),
    Capability("vision_url", "vision (URL)", cap_vision_url),
    Capability("vision_base64", "vision (base64)", cap_vision_base64),
    Capability("json_object", "json_object", cap_json_object),
    Capability("json_schema", "json_schema", cap_json_schema),
    Capability("stop", "stop", cap_stop),
    Capability("seed", "seed", cap_seed),
    Capability("n2", "n=2", cap_n2),
    Capability("finish_length", "finish_reason length", cap_finish_length),
    Capability("stream_usage", "usage in stream", cap_stream_usage),
    Capability("embeddings", "embeddings", cap_embeddings),
]
CAP_IDS = [c.id for c in CAPABILITIES]
