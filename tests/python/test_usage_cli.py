"""Metering end to end: requests made with an org's key show up in `llmgw usage`.

The org `acme-usage` is used by this test alone, so its count is exact. Metering is
asynchronous, so the CLI is polled for up to 10 s. The contract read here: some line of
`llmgw usage --config FILE --org NAME` holds the request count as a standalone integer and
the total cost in USD as a decimal number (optionally `$`-prefixed) within 1% of the sum
of the responses' `cost_usd`.
"""

from __future__ import annotations

import re
import time

import pytest

from conftest import MODEL, Target, expected_cost

INT = re.compile(r"(?<![\w.$-])(\d+)(?![\w.])")
DECIMAL = re.compile(r"\$?(\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)")


def line_matches(line: str, count: int, cost: float) -> bool:
    has_count = any(int(m) == count for m in INT.findall(line))
    has_cost = any(abs(float(m) - cost) <= max(cost * 0.01, 1e-9) for m in DECIMAL.findall(line))
    return has_count and has_cost


@pytest.mark.gateway
def test_usage_cli_counts_requests_and_cost(target: Target) -> None:
    assert target.gateway is not None and target.usage_key is not None
    client = target.client(api_key=target.usage_key)
    cost = 0.0
    sent = 0
    for i in range(2):
        resp = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"[emu:words=200] metered {i}"}]
        )
        assert resp.usage is not None
        cost += expected_cost(resp.usage.prompt_tokens, resp.usage.completion_tokens)
        sent += 1
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "[emu:words=100] metered stream"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
    assert usage is not None
    cost += expected_cost(usage.prompt_tokens, usage.completion_tokens)
    sent += 1

    gw = target.gateway
    deadline = time.monotonic() + 10
    out = None
    while time.monotonic() < deadline:
        out = gw.cli("usage", "--config", str(gw.config), "--org", target.usage_org)
        if out.returncode == 0 and any(line_matches(l, sent, cost) for l in out.stdout.splitlines()):
            return
        time.sleep(0.2)
    assert out is not None
    pytest.fail(
        f"`llmgw usage --org {target.usage_org}` never showed {sent} requests costing ${cost:.9f} "
        f"(exit {out.returncode})\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    )


def test_line_matcher() -> None:
    """The parser above, on a few plausible output lines."""
    assert line_matches("acme-usage  requests=3  cost=$0.000318", 3, 0.000318)
    assert line_matches("org acme-usage: 3 requests, 812 tokens, $0.00031800 USD", 3, 0.000318)
    assert not line_matches("org acme-usage: 2 requests, $0.000318", 3, 0.000318)
    assert not line_matches("3 requests, $0.0003", 3, 0.000318)
