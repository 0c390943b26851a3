#!/usr/bin/env python3
"""Writes the hand-made seed corpus of every fuzz target (fuzz/corpus/<target>/).

Valid examples of each format, as the emulators and the unit tests send them:
the fuzzer starts from these and mutates. Inputs the fuzzer found interesting
are kept beside them (named by their SHA-1, as libFuzzer names them). Run from
the repository root: `python3 fuzz/seeds.py`. Idempotent.
"""
import json
import os
import re
import struct
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def j(v):
    return json.dumps(v, separators=(",", ":"))


def sse(events, done=False, crlf=False):
    out = ""
    for ev in events:
        if isinstance(ev, tuple):
            out += f"event: {ev[0]}\ndata: {j(ev[1])}\n\n"
        else:
            out += f"data: {j(ev)}\n\n"
    if done:
        out += "data: [DONE]\n\n"
    return out.replace("\n", "\r\n") if crlf else out


# ---- config ---------------------------------------------------------------

def config():
    for path in ["deploy/gateway.yaml", "deploy/container.yaml"]:
        with open(os.path.join(ROOT, path)) as f:
            write("config", os.path.basename(path), f.read())
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```yaml\n(.*?)```", f.read(), re.S)
    for i, block in enumerate(blocks):
        write("config", f"readme-{i}.yaml", block)
    write("config", "smallest.yaml", """edge:
  http_addr: 127.0.0.1:8080
providers:
  - name: openai
    type: openai
    api_key: ${OPENAI_API_KEY}
  - name: claude
    type: anthropic
    api_key: ${ANTHROPIC_API_KEY:-x}
  - name: off
    type: gemini
    api_key: ${UNSET}
models:
  - name: gpt-4o-mini
    target: openai/gpt-4o-mini
    price: { input_per_mtok: 0.15, output_per_mtok: 0.60 }
services:
  discovery: consul
  consul: { addr: http://127.0.0.1:8500, advertise_host: "${POD_IP}" }
shutdown: { drain: 30s }
cache: { default_ttl: 5m, max_ttl: 24h }
""")
    write("config", "anchors.yaml", "a: &x [1, 2]\nb: *x\nedge: !tag {http_addr: '1:2'}\n")


# ---- requests -------------------------------------------------------------

USER = {"role": "user", "content": "Hello!"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"], "additionalProperties": False}, "strict": True}}]


def openai_request():
    reqs = {
        "min": {"model": "gpt-4o-mini", "messages": [USER]},
        "params": {"model": "m", "messages": [{"role": "system", "content": "be brief"}, USER],
                   "temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "max_completion_tokens": 64,
                   "presence_penalty": 0.5, "frequency_penalty": -0.5, "stop": ["\n", "END"], "n": 2,
                   "seed": 7, "user": "u1", "logprobs": True, "top_logprobs": 3,
                   "logit_bias": {"50256": -100}, "service_tier": "auto", "store": False,
                   "metadata": {"k": "v"}, "reasoning_effort": "low", "x_extra": {"a": [1]}},
        "stream": {"model": "m", "messages": [USER], "stream": True,
                   "stream_options": {"include_usage": True}, "stop": "x"},
        "tools": {"model": "m", "messages": [
            USER,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
            "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False},
        "tool-choice-required": {"model": "m", "messages": [USER], "tools": TOOLS, "tool_choice": "required"},
        "parts": {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}]}]},
        "json-schema": {"model": "m", "messages": [USER], "response_format": {
            "type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
                "type": "object", "properties": {"a": {"type": "array", "items": {"$ref": "#/$defs/n"}},
                                                 "b": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
                "$defs": {"n": {"type": "integer", "minimum": 0}}, "required": ["a"]}}}},
        "json-object": {"model": "m", "messages": [USER], "response_format": {"type": "json_object"}},
        "reasoning": {"model": "m", "messages": [USER, {"role": "assistant", "content": "hi", "reasoning_content": "hmm",
                      "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                          {"type": "redacted_thinking", "data": "d"}]},
                                          {"role": "developer", "content": [{"type": "text", "text": "d"}]}]},
        "legacy-function": {"model": "m", "messages": [USER, {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                            {"role": "function", "name": "f", "content": "1"}]},
    }
    for name, r in reqs.items():
        write("openai_request", name + ".json", j(r))


def anthropic_request():
    reqs = {
        "min": {"model": "claude-sonnet-4", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello"}]},
        "full": {"model": "claude", "max_tokens": 256, "system": [{"type": "text", "text": "be brief",
                 "cache_control": {"type": "ephemeral"}}], "temperature": 0.5, "top_p": 0.9, "top_k": 5,
                 "stop_sequences": ["END"], "stream": True, "metadata": {"user_id": "u"},
                 "thinking": {"type": "enabled", "budget_tokens": 2048},
                 "messages": [
                     {"role": "user", "content": [{"type": "text", "text": "look"},
                      {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                      {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                      {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]},
                     {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                      {"type": "text", "text": "calling"},
                      {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                      "content": [{"type": "text", "text": "sunny"}], "is_error": False}]}],
                 "tools": [{"name": "get_weather", "description": "w", "input_schema": {"type": "object",
                            "properties": {"city": {"type": "string"}}}}],
                 "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}},
        "count-tokens": {"model": "claude", "system": "s", "messages": [{"role": "user", "content": "hi"}]},
        "output-format": {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
                          "output_config": {"effort": "low", "format": {"type": "json_schema",
                          "schema": {"type": "object"}}}, "tool_choice": {"type": "auto"}},
    }
    for name, r in reqs.items():
        write("anthropic_request", name + ".json", j(r))


def embeddings():
    for name, r in {
        "text": {"model": "text-embedding-3-small", "input": "hello"},
        "many": {"model": "m", "input": ["a", "b"], "dimensions": 8, "encoding_format": "base64", "user": "u"},
        "tokens": {"model": "m", "input": [[1, 2, 3], [4]], "encoding_format": "float"},
        "token": {"model": "m", "input": [1, 2, 3]},
        "response": {"object": "list", "model": "m", "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 1e-3]},
            {"object": "embedding", "index": 1, "embedding": "AAAAAAAAgD8="}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2}},
    }.items():
        write("embeddings", name + ".json", j(r))


# ---- provider answers -----------------------------------------------------

def openai_decode():
    msg = {"role": "assistant", "content": "Hello there!", "refusal": None}
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
             "prompt_tokens_details": {"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 1}}
    write("openai_decode", "response.json", j({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
        "system_fingerprint": "fp", "service_tier": "default",
        "choices": [{"index": 0, "message": msg, "finish_reason": "stop",
                     "logprobs": {"content": [{"token": "Hello", "logprob": -0.1, "top_logprobs": []}]}},
                    {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                     "finish_reason": "tool_calls"}],
        "usage": usage}))
    write("openai_decode", "error.json", j({"error": {"message": "Rate limit", "type": "requests",
                                                    "param": None, "code": "rate_limit_exceeded"}}))
    write("openai_decode", "error-mistral.json", j({"object": "error", "message": "bad", "type": "invalid_request_error",
                                                   "param": None, "code": "3051"}))
    write("openai_decode", "error-azure.json", j({"error": {"code": "content_filter", "message": "filtered",
                                                          "innererror": {"code": "ResponsibleAIPolicyViolation"}}}))
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "lo ☃"}, "logprobs": None}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                                    "function": {"name": "f", "arguments": "{\"a"}}]}}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\":1}"}}]}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": usage},
    ]
    write("openai_decode", "stream.sse", sse(chunks, done=True))
    write("openai_decode", "stream-crlf.sse", sse(chunks[:3], done=True, crlf=True))
    write("openai_decode", "stream-azure.sse", ": keep-alive\n\n" + sse(
        [{"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": []}] + chunks[:2]
        + [{**base, "choices": [{"index": 0, "delta": {"reasoning_content": "r"}, "finish_reason": "length"}],
            "usage": usage}], done=True))
    write("openai_decode", "stream-error.sse", sse(chunks[:2]) + "event: error\ndata: "
          + j({"error": {"message": "overloaded"}}) + "\n\n")
    write("openai_decode", "stream-early.sse", sse(chunks[:2]))


def anthropic_decode():
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 1}
    write("anthropic_decode", "response.json", j({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xx"},
                    {"type": "text", "text": "Hello"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "json", "input": {"a": 1}}],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": usage}))
    write("anthropic_decode", "error.json", j({"type": "error", "error": {"type": "invalid_request_error",
                                                                      "message": "prompt is too long: 300000 tokens"}}))
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                                "model": "claude", "content": [], "stop_reason": None,
                                                                "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": "sig"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "Hello ☃"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("content_block_start", {"type": "content_block_start", "index": 2,
                                 "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": 15}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    write("anthropic_decode", "stream.sse", sse(events))
    write("anthropic_decode", "stream-redacted.sse", sse(events[:1] + [
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "redacted_thinking", "data": "xx"}}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "tool_use", "id": "t", "name": "json", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": "{}"}})] + events[-2:]))
    write("anthropic_decode", "stream-error.sse", sse(events[:2] + [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]))


def gemini_decode():
    usage = {"promptTokenCount": 5, "candidatesTokenCount": 7, "totalTokenCount": 12,
             "cachedContentTokenCount": 1, "thoughtsTokenCount": 2}
    write("gemini_decode", "response.json", j({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "thinking...", "thought": True}, {"text": "Hello"},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"}]},
            "finishReason": "STOP", "index": 0, "avgLogprobs": -0.1,
            "logprobsResult": {"chosenCandidates": [{"token": "Hello", "logProbability": -0.1}],
                               "topCandidates": [{"candidates": [{"token": "Hello", "logProbability": -0.1}]}]}}],
        "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "r1"}))
    write("gemini_decode", "blocked.json", j({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage}))
    write("gemini_decode", "error.json", j({"error": {"code": 429, "message": "Resource exhausted",
        "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                     "retryDelay": "13s"}]}}))
    events = [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
         "modelVersion": "gemini-2.5-flash"},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo ☃"}]}, "index": 0}]},
        {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                         "finishReason": "STOP", "index": 0}], "usageMetadata": usage},
    ]
    write("gemini_decode", "stream.sse", sse(events, crlf=True))
    write("gemini_decode", "stream-lf.sse", sse(events[:1] + [
        {"candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "MAX_TOKENS", "index": 1}],
         "usageMetadata": usage}]))
    write("gemini_decode", "stream-blocked.sse", sse([{"promptFeedback": {"blockReason": "OTHER"}}]))
    write("gemini_decode", "stream-error.sse", sse(events[:1] + [{"error": {"code": 500, "message": "internal"}}]))


def frame(headers, payload):
    hb = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hb += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(hb) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + hb + payload
    return msg + struct.pack(">I", zlib.crc32(msg))


def event(kind, payload):
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                 j(payload).encode())


def bedrock_decode():
    usage = {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15, "cacheReadInputTokens": 1,
             "cacheWriteInputTokens": 2}
    write("bedrock_decode", "response.json", j({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "s"}}},
            {"text": "Hello"},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "tooluse_2", "name": "json", "input": {"a": 1}}}]}},
        "stopReason": "tool_use", "usage": usage, "metrics": {"latencyMs": 100}}))
    write("bedrock_decode", "error.json", j({"message": "Input is too long for requested model.",
                                           "__type": "com.amazon#ValidationException"}))
    frames = [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hmm"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Hello ☃"}}),
        event("contentBlockStop", {"contentBlockIndex": 1}),
        event("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"a\":1}"}}}),
        event("contentBlockStop", {"contentBlockIndex": 2}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}),
    ]
    write("bedrock_decode", "stream.bin", b"".join(frames))
    write("bedrock_decode", "stream-json-tool.bin", b"".join([
        frames[0],
        event("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": "json"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{}"}}}),
        event("messageStop", {"stopReason": "end_turn"})]))
    write("bedrock_decode", "stream-exception.bin", frames[0] + frame(
        {":exception-type": "throttlingException", ":content-type": "application/json", ":message-type": "exception"},
        j({"message": "Too many requests"}).encode()))
    write("bedrock_decode", "stream-error.bin", frames[0] + frame(
        {":error-code": "InternalFailure", ":error-message": "boom", ":message-type": "error"}, b""))


def ollama_decode():
    write("ollama_decode", "response.json", j({
        "model": "llama3.2", "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": "Hello", "thinking": "hmm", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "call_2", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
        "done": True, "done_reason": "stop", "total_duration": 1, "prompt_eval_count": 10, "eval_count": 5}))
    write("ollama_decode", "error.json", j({"error": "model \"x\" not found, try pulling it first"}))
    lines = [
        {"model": "llama3.2", "message": {"role": "assistant", "content": "", "thinking": "hmm"}, "done": False},
        {"model": "llama3.2", "message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"model": "llama3.2", "message": {"role": "assistant", "content": "lo ☃"}, "done": False},
        {"model": "llama3.2", "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": {"a": 1}}}]}, "done": False},
        {"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "length", "prompt_eval_count": 10, "eval_count": 5},
    ]
    write("ollama_decode", "stream.ndjson", "".join(j(l) + "\n" for l in lines))
    write("ollama_decode", "stream-crlf-no-final-newline.ndjson", "\r\n".join(j(l) for l in lines))
    write("ollama_decode", "stream-error.ndjson", j(lines[1]) + "\n" + j({"error": "out of memory"}) + "\n")


for fn in [config, openai_request, anthropic_request, embeddings,
           openai_decode, anthropic_decode, gemini_decode, bedrock_decode, ollama_decode]:
    fn()
