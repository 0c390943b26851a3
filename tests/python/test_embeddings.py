"""Embeddings through the official openai SDK: float and base64 (the SDK's
default, which it decodes itself), dimensions, usage and cost, and errors."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

from conftest import EMBED_MODEL, EMBED_PRICE_IN, Target


def test_embeddings_float_and_base64_agree(target: Target) -> None:
    client = target.client()
    # The SDK asks for base64 by default and decodes it to floats.
    default = client.embeddings.create(model=EMBED_MODEL, input=["hello world", "second input"])
    floats = client.embeddings.create(model=EMBED_MODEL, input=["hello world", "second input"], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 1536
    # The same f32 values: base64 carries them exactly, JSON floats in their
    # shortest f32 spelling (as OpenAI writes them), so compare at f32 precision.
    for a, b in zip(default.data, floats.data):
        assert len(a.embedding) == len(b.embedding)
        assert all(abs(x - y) <= 1e-7 * max(1.0, abs(x)) for x, y in zip(a.embedding, b.embedding))
    assert default.data[0].embedding != default.data[1].embedding
    norm = math.sqrt(sum(x * x for x in floats.data[0].embedding))
    assert abs(norm - 1.0) < 1e-3
    assert floats.usage.prompt_tokens > 0


def test_embeddings_explicit_base64_is_left_encoded(target: Target) -> None:
    """Asked for base64 explicitly, the SDK hands the string over undecoded: little-endian
    f32s, the same values as the float encoding."""
    client = target.client()
    b64 = client.embeddings.create(model=EMBED_MODEL, input="hello world", encoding_format="base64")
    floats = client.embeddings.create(model=EMBED_MODEL, input="hello world", encoding_format="float")
    raw = base64.b64decode(b64.data[0].embedding)  # type: ignore[arg-type]
    assert len(raw) == 4 * 1536
    assert list(struct.unpack(f"<{1536}f", raw)) == [struct.unpack("<f", struct.pack("<f", x))[0] for x in floats.data[0].embedding]


def test_embeddings_token_inputs(target: Target) -> None:
    """Token arrays (one list, or a list of lists) are inputs too, as LangChain sends them."""
    client = target.client()
    one = client.embeddings.create(model=EMBED_MODEL, input=[9906, 1917], encoding_format="float")
    many = client.embeddings.create(model=EMBED_MODEL, input=[[9906, 1917], [15339]], encoding_format="float")
    assert len(one.data) == 1 and len(many.data) == 2
    assert one.data[0].embedding == many.data[0].embedding
    assert many.data[0].embedding != many.data[1].embedding
    assert 0 < one.usage.prompt_tokens < many.usage.prompt_tokens
    assert target.emu.requests("/v1/embeddings")[-1]["body"]["input"] == [[9906, 1917], [15339]]


def test_embeddings_dimensions_and_single_input(target: Target) -> None:
    resp = target.client().embeddings.create(model=EMBED_MODEL, input="just one", dimensions=256)
    assert len(resp.data) == 1
    assert len(resp.data[0].embedding) == 256


@pytest.mark.gateway
def test_embeddings_cost_and_metadata(target: Target) -> None:
    resp = target.client().embeddings.create(model=EMBED_MODEL, input="price me", encoding_format="float")
    extra = resp.model_extra or {}
    usage = resp.usage.model_extra or {}
    assert abs(usage["cost_usd"] - resp.usage.prompt_tokens * EMBED_PRICE_IN / 1e6) < 1e-12
    assert extra["metadata"]["used_provider"] == "emu"


def test_embeddings_errors(target: Target) -> None:
    client = target.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=EMBED_MODEL, input=[])
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=EMBED_MODEL, input="x", dimensions=0)
