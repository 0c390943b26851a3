"""Fixtures for the OpenAI conformance suite.

Every SDK test takes the ``target`` fixture, which runs it three ways (tests marked
``gateway`` only the last two):

* ``direct`` -- the SDK talks straight to the OpenAI emulator (proves the emulator speaks
  OpenAI's wire format to the official SDK);
* ``all`` -- through ``llmgw all --config FILE`` (one process);
* ``split`` -- through ``llmgw auth|router|adapter|metering|edge --config FILE`` (gRPC between
  the services).

Environment: ``EMULATOR_BIN`` (the ``openai-emulator`` binary) and ``LLMGW_BIN`` (the
``llmgw`` binary). Tests marked ``gateway`` (and the ``all``/``split`` targets) are skipped,
with a reason saying so, only when ``LLMGW_BIN`` is unset; ``make test`` always sets it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import httpx
import pytest

EMU_KEY = "sk-emu-provider-key-0123456789"
MODEL = "gpt-4o-mini"
CLAUDE = "claude-sonnet"  # an anthropic-type provider's model (test_messages.py)
EMBED_MODEL = "text-embedding-3-small"
EMBED_PRICE_IN = 0.02
PRICE_IN = 0.15  # USD per million input tokens, as in the config below
PRICE_OUT = 0.60
READY_TIMEOUT_S = 30.0
MAX_BODY_BYTES = 1 << 20  # the gateway's request size limit (edge.max_body_bytes)
SPLIT_SERVICES = ("auth", "router", "adapter", "metering")
POOL = "sdk-pool"  # test_routing.py: primary, then backup
CONFIG = "sdk-config"
PRIMARY = "sdk-primary"  # fault profiles of the emulator behind the pool
BACKUP = "sdk-backup"
IMAGEN = "gemini-imagen"  # test_surface.py: a google-type provider's Imagen model

NEEDS_GATEWAY = "LLMGW_BIN is not set: gateway tests need the built llmgw binary (make test sets it)"



def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("LLMGW_BIN"):
        return
    skip = pytest.mark.skip(reason=NEEDS_GATEWAY)
    for item in items:
        callspec = getattr(item, "callspec", None)
        mode = callspec.params.get("target") if callspec else None
        if "gateway" in item.keywords or mode in ("all", "split"):
            item.add_marker(skip)


def _binary(var: str) -> str:
    path = os.environ.get(var)
    if not path:
        raise pytest.UsageError(f"{var} is not set (path to the built binary)")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise pytest.UsageError(f"{var}={path} is not an executable file")
    return path


_PORT_FIRST, _PORT_SPAN = 20000, 12000
_next_port = os.getpid() * 97 % _PORT_SPAN


def free_port() -> int:
    """A loopback port not handed out before in this process, below the kernel's ephemeral
    range (32768 and up), so no outgoing connection's local port takes it before the child
    process binds it."""
    global _next_port
    for _ in range(_PORT_SPAN):
        port = _PORT_FIRST + _next_port % _PORT_SPAN
        _next_port += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORT_FIRST}..{_PORT_FIRST + _PORT_SPAN}")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Emulator:
    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def requests(self, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/_emu/requests", timeout=10)
        r.raise_for_status()
        return [x for x in r.json() if x["path"] == path]

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_emu/requests", timeout=10).raise_for_status()

    def fault(self, profile: str, **settings: Any) -> None:
        """Sets a fault profile (``/_f/{profile}/...`` base URLs); no settings: healthy."""
        httpx.put(f"{self.url}/_emu/faults/{profile}", json=settings, timeout=10).raise_for_status()

    def fault_requests(self, profile: str) -> int:
        r = httpx.get(f"{self.url}/_emu/faults/{profile}", timeout=10)
        r.raise_for_status()
        return int(r.json()["requests"])

    def last_request(self) -> dict[str, Any]:
        reqs = self.requests()
        assert reqs, "the emulator received no chat completion request"
        return reqs[-1]


def start_emulator(binary: str, log: Path) -> Emulator:
    err = open(log, "w")
    proc = subprocess.Popen(
        [binary, "--addr", "127.0.0.1:0", "--api-key", EMU_KEY],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT_S)
    line = proc.stdout.readline().strip() if ready else ""
    prefix = "listening on "
    if not line.startswith(prefix):
        stop(proc)
        raise RuntimeError(f"openai-emulator did not report its address (got {line!r}); see {log}")
    return Emulator(proc=proc, url=line[len(prefix):])


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    emu = start_emulator(_binary("EMULATOR_BIN"), log)
    yield emu
    stop(emu.proc)


# ---------------------------------------------------------------------------------------
# The gateway
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Gateway:
    mode: str  # "all" | "split"
    binary: str
    config: Path
    env: dict[str, str]
    http_addr: str
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Runs an admin subcommand (`keys`, `usage`, ...) against this gateway's config."""
        return subprocess.run(
            [self.binary, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def create_key(self, org: str) -> str:
        out = self.cli("keys", "create", "--config", str(self.config), "--org", org)
        assert out.returncode == 0, f"llmgw keys create failed ({out.returncode}): {out.stderr}"
        lines = [l.strip() for l in out.stdout.splitlines() if l.strip()]
        assert lines, f"llmgw keys create printed nothing; stderr: {out.stderr}"
        return lines[-1]

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            parts.append(f"--- {log.name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)


def write_config(path: Path, data_dir: Path, emu: Emulator, mode: str) -> str:
    http_addr = f"127.0.0.1:{free_port()}"
    text = f"""\
data_dir: {data_dir}
edge:
  http_addr: {http_addr}
  max_body_bytes: {MAX_BODY_BYTES}  # test_errors.py/test_messages.py: 413 above it
  grpc_addr: 127.0.0.1:{free_port()}
providers:
  - name: emu
    type: openai
    base_url: {emu.base_url}
    api_key: ${{EMU_KEY}}
  - name: primary
    type: openai
    base_url: {emu.url}/_f/{PRIMARY}/v1
    api_key: ${{EMU_KEY}}
  - name: backup
    type: openai
    base_url: {emu.url}/_f/{BACKUP}/v1
    api_key: ${{EMU_KEY}}
  - name: claude
    type: anthropic
    base_url: {emu.base_url}
    api_key: ${{EMU_KEY}}
  # test_surface.py: images through Imagen (Gemini API, the emulator's /v1beta).
  - name: gem
    type: google
    base_url: {emu.url}/v1beta
    api_key: ${{EMU_KEY}}
models:
  - name: {MODEL}
    target: emu/{MODEL}
    price: {{ input_per_mtok: {PRICE_IN}, output_per_mtok: {PRICE_OUT} }}
  - name: {CLAUDE}
    target: claude/claude-3-5-sonnet-20241022
    price: {{ input_per_mtok: 3.0, output_per_mtok: 15.0 }}
  - name: {EMBED_MODEL}
    target: emu/{EMBED_MODEL}
    price: {{ input_per_mtok: {EMBED_PRICE_IN}, output_per_mtok: 0 }}
  # test_surface.py: legacy completions, images and audio (prices per
  # million tokens, images, seconds and characters).
  - name: gpt-3.5-turbo-instruct
    target: emu/gpt-3.5-turbo-instruct
    price: {{ input_per_mtok: 1.5, output_per_mtok: 2.0 }}
  - name: dall-e-2
    target: emu/dall-e-2
    price: {{ input_per_mtok: 0, output_per_mtok: 20000 }}
  - name: whisper-1
    target: emu/whisper-1
    price: {{ input_per_mtok: 100, output_per_mtok: 0 }}
  - name: tts-1
    target: emu/tts-1
    price: {{ input_per_mtok: 15, output_per_mtok: 0 }}
  - name: {IMAGEN}
    target: gem/imagen-4.0-generate-001
    price: {{ input_per_mtok: 0, output_per_mtok: 40000 }}
  # test_routing.py: a pool over two fault profiles of the emulator.
  - name: {POOL}
    strategy: priority
    targets: [{{ target: primary/{MODEL} }}, {{ target: backup/{MODEL} }}]
routing:
  configs:
    - name: {CONFIG}
      variants:
        - {{ name: terse, weight: 1, model: {MODEL}, params: {{ temperature: 0.1 }}, system: "Be terse." }}
"""
    if mode == "split":
        text += "services:\n" + "".join(
            f"  {name}:\n    addr: 127.0.0.1:{free_port()}\n" for name in SPLIT_SERVICES
        )
    path.write_text(text)
    return http_addr


def wait_healthy(gw: Gateway) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    url = f"http://{gw.http_addr}/health"
    last = "no answer"
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            for proc in gw.procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"llmgw {gw.mode}: a process exited with {proc.returncode} before the edge "
                        f"was healthy\n{gw.log_tail()}"
                    )
            try:
                r = client.get(url)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.05)  # poll interval, not a readiness guess
    raise RuntimeError(f"llmgw {gw.mode}: {url} not healthy after {READY_TIMEOUT_S}s ({last})\n{gw.log_tail()}")


def start_gateway(mode: str, emu: Emulator, tmp: Path) -> tuple[Gateway, dict[str, str]]:
    binary = _binary("LLMGW_BIN")
    config = tmp / "gateway.yaml"
    http_addr = write_config(config, tmp / "data", emu, mode)
    env = {**os.environ, "EMU_KEY": EMU_KEY}
    gw = Gateway(mode=mode, binary=binary, config=config, env=env, http_addr=http_addr, procs=[], logs=[])
    # Keys are made before the services start, so nothing races on the store.
    keys = {org: gw.create_key(org) for org in ("acme", "acme-usage")}
    roles = ["all"] if mode == "all" else [*SPLIT_SERVICES, "edge"]
    for role in roles:
        log = tmp / f"llmgw-{role}.log"
        out = open(log, "wb")
        gw.logs.append(log)
        gw.procs.append(
            subprocess.Popen([binary, role, "--config", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT)
        )
    try:
        wait_healthy(gw)
    except BaseException:
        for proc in reversed(gw.procs):
            stop(proc)
        raise
    return gw, keys


# ---------------------------------------------------------------------------------------
# The target every SDK test runs against
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    mode: str  # "direct" | "all" | "split"
    base_url: str  # OpenAI base URL, ending in /v1
    api_key: str  # what the client sends
    emu: Emulator
    gateway: Gateway | None = None
    usage_key: str | None = None  # a key of the org "acme-usage", used only by the usage test
    usage_org: str = "acme-usage"

    @property
    def via_gateway(self) -> bool:
        return self.gateway is not None

    def client(self, **kw: Any) -> "openai.OpenAI":  # noqa: F821
        import openai

        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        return openai.OpenAI(base_url=self.base_url, api_key=kw.pop("api_key", self.api_key), **kw)

    def async_client(self, **kw: Any) -> "openai.AsyncOpenAI":  # noqa: F821
        import openai

        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=kw.pop("api_key", self.api_key), **kw)

    @property
    def anthropic_base_url(self) -> str:
        """The Anthropic SDK's base URL (it appends ``/v1/messages``)."""
        return self.base_url.removesuffix("/v1")

    def anthropic(self, **kw: Any) -> "anthropic.Anthropic":  # noqa: F821
        import anthropic

        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        return anthropic.Anthropic(base_url=self.anthropic_base_url, api_key=kw.pop("api_key", self.api_key), **kw)

    def async_anthropic(self, **kw: Any) -> "anthropic.AsyncAnthropic":  # noqa: F821
        import anthropic

        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        return anthropic.AsyncAnthropic(
            base_url=self.anthropic_base_url, api_key=kw.pop("api_key", self.api_key), **kw
        )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        gateway_only = metafunc.definition.get_closest_marker("gateway") is not None
        modes = ["all", "split"] if gateway_only else ["direct", "all", "split"]
        metafunc.parametrize("target", modes, indirect=True, scope="session")


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    mode = request.param
    if mode == "direct":
        yield Target(mode=mode, base_url=emulator.base_url, api_key=EMU_KEY, emu=emulator)
        return
    if not os.environ.get("LLMGW_BIN"):
        pytest.skip(NEEDS_GATEWAY)
    tmp = tmp_path_factory.mktemp(f"llmgw-{mode}")
    gw, keys = start_gateway(mode, emulator, tmp)
    try:
        yield Target(
            mode=mode,
            base_url=f"http://{gw.http_addr}/v1",
            api_key=keys["acme"],
            emu=emulator,
            gateway=gw,
            usage_key=keys["acme-usage"],
        )
    finally:
        for proc in reversed(gw.procs):
            stop(proc)
        if os.environ.get("LLMGW_KEEP_TMP") is None:
            shutil.rmtree(tmp / "data", ignore_errors=True)


T = TypeVar("T")


@pytest.fixture(scope="session")
def aio() -> Iterator[Callable[[Awaitable[T]], T]]:
    """Runs a coroutine on one event loop for the whole session: LangChain caches its async
    HTTP clients per base URL, and a client bound to a closed loop fails."""
    with asyncio.Runner() as runner:
        yield runner.run  # type: ignore[misc]


@pytest.fixture
def emu(target: Target) -> Emulator:
    """The emulator, with its record cleared for this test."""
    target.emu.clear()
    return target.emu


# ---------------------------------------------------------------------------------------
# Helpers shared by the tests
# ---------------------------------------------------------------------------------------


def prompt_tokens(*texts: str) -> int:
    """The emulator's prompt token count for messages with these texts."""
    return max(1, -(-sum(len(t) for t in texts) // 4))


def expected_cost(prompt: int, completion: int) -> float:
    return prompt * PRICE_IN / 1e6 + completion * PRICE_OUT / 1e6
