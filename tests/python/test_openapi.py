"""``GET /openapi.json`` and schemathesis (from PyPI) against it, on a live gateway.

Each mode (one process, split) gets a gateway of its own: the admin run creates orgs, keys
and policies, and they must not reach the other tests' orgs.

schemathesis runs every check it has but ``positive_data_acceptance``: whether a request
that fits the schema is served depends on the deployment (which models exist, which
endpoints a model has), not on its shape. So it checks that nothing answers 5xx, every
status, content type, header and body is the one documented, schema-breaking requests are
refused, requests without a key get 401, undeclared methods get 405 with ``Allow``, and,
through the document's links, that created orgs, projects, keys and credentials can be read
back. The seed is fixed so CI is repeatable; set ``LLMGW_SCHEMATHESIS_SEED`` (or ``random``)
to explore others.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import Emulator, Gateway, start_gateway, stop

pytestmark = pytest.mark.gateway

MAX_EXAMPLES = "40"


@pytest.fixture(scope="module", params=["all", "split"])
def gateway(
    request: pytest.FixtureRequest, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, str, str]]:
    tmp = tmp_path_factory.mktemp(f"openapi-{request.param}")
    gw, keys = start_gateway(request.param, emulator, tmp)
    try:
        out = gw.cli("keys", "create", "--config", str(gw.config), "--org", "platform", "--role", "platform_admin")
        assert out.returncode == 0, out.stderr
        admin = out.stdout.split()[-1]
        yield gw, keys["acme"], admin
    finally:
        for proc in reversed(gw.procs):
            stop(proc)


def document(gw: Gateway) -> dict:
    r = httpx.get(f"http://{gw.http_addr}/openapi.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    return r.json()


def test_document_describes_the_api(gateway: tuple[Gateway, str, str]) -> None:
    gw, _, _ = gateway
    doc = document(gw)
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    # (The Rust unit test `openapi::describes_every_route_and_only_those` holds the list.)
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/audio/speech", "/openapi.json"):
        assert path in paths, path
    for item in paths.values():
        for method, op in item.items():
            if method != "parameters":
                assert op["responses"], f"{method} has no responses"
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_described_operation_is_served(gateway: tuple[Gateway, str, str]) -> None:
    """No operation of the document falls to the router's 404 or 405."""
    gw, key, admin = gateway
    doc = document(gw)
    ids = {"{model}": "gpt-4o-mini", "{scope}": "keys"}
    with httpx.Client(base_url=f"http://{gw.http_addr}", timeout=30) as client:
        for path, item in doc["paths"].items():
            url = path
            for name, value in ids.items():
                url = url.replace(name, value)
            for name in ("{org_id}", "{key_id}", "{scope_id}", "{credential_id}"):
                url = url.replace(name, "nope_1")
            for method in item:
                if method == "parameters":
                    continue
                auth = admin if path.startswith("/admin/") else key
                r = client.request(method.upper(), url, headers={"authorization": f"Bearer {auth}"})
                documented = item[method]["responses"]
                assert str(r.status_code) in documented, f"{method.upper()} {url}: {r.status_code} {r.text}"
                assert r.status_code != 405, f"{method.upper()} {url}"
                if r.status_code == 404:
                    assert "Unknown request URL" not in r.text, f"{method.upper()} {url} is not routed"


def schemathesis(gw: Gateway, auth: str, *args: str) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "schemathesis"
    seed = os.environ.get("LLMGW_SCHEMATHESIS_SEED", "20261122")
    cmd = [
        str(binary),
        "run",
        f"http://{gw.http_addr}/openapi.json",
        "--header",
        f"Authorization: Bearer {auth}",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        MAX_EXAMPLES,
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-color",
        *args,
    ]
    if seed != "random":
        cmd += ["--seed", seed]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)


def assert_clean(out: subprocess.CompletedProcess[str], gw: Gateway) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"schemathesis failed ({out.returncode}):\n{text[-12000:]}\n{gw.log_tail(20)}"
    assert " passed" in text and "generated" in text, text[-2000:]


def test_schemathesis_model_routes(gateway: tuple[Gateway, str, str]) -> None:
    """The OpenAI and Anthropic routes, usage, health and metrics with a member key."""
    gw, key, _ = gateway
    out = schemathesis(gw, key, "--exclude-path-regex", "^/admin/", "--phases", "examples,coverage,fuzzing")
    assert_clean(out, gw)


def test_schemathesis_admin_routes(gateway: tuple[Gateway, str, str]) -> None:
    """The admin API with a platform admin key, stateful through the document's links."""
    gw, _, admin = gateway
    out = schemathesis(gw, admin, "--include-path-regex", "^/admin/")
    assert_clean(out, gw)
