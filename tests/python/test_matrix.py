"""The translation matrix: every provider x every capability, through the gateway's public
OpenAI interface with the official ``openai`` SDK, all against the one emulator.

Each cell is exactly one of:

* ``pass`` -- the capability worked end to end (content and shape checked, not just status);
* ``by design`` -- the gateway answered a 400 whose ``param`` names the parameter and whose
  message names the provider; such cells are declared, with the param, in ``BY_DESIGN``;
* a failure. A cell whose outcome differs from its declaration fails, so no provider can
  be degraded silently. ``KNOWN_BROKEN`` lists the cells that fail because of a known bug
  (each with its reason); one of them that starts working fails too, until it is removed.

The result is the table in ``docs/providers.md``: written when ``LLMGW_UPDATE_MATRIX=1``,
otherwise compared with the checked-in file (a stale file fails the run).

One gateway (``llmgw all``) serves every row; the same matrix also runs through the split
deployment (five processes, gRPC between them) and must give the same answers there.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Emulator
from matrix_support import (
    CAP_IDS,
    CAPABILITIES,
    ROOT,
    ROW_IDS,
    ROWS,
    Cell,
    MatrixGateway,
    Outcome,
    run_cell,
    start_matrix_gateway,
)

pytestmark = pytest.mark.gateway

# ---------------------------------------------------------------------------------------
# The declarations: (row, capability) -> ...
# ---------------------------------------------------------------------------------------

#: Cells the gateway refuses on purpose: a 400 naming this `param` and the provider.
BY_DESIGN: dict[tuple[str, str], str] = {
    # Bedrock Converse: no seed, one answer per request.
    ("bedrock", "seed"): "seed",
    ("bedrock", "n2"): "n",
    # Anthropic's Messages API has no seed and one answer per request.
    ("anthropic", "seed"): "seed",
    ("anthropic", "n2"): "n",
    # Anthropic has no embeddings API: a 400 naming `model`.
    ("anthropic", "embeddings"): "model",
    # Ollama's /api/chat: tools are offered or not (no forcing), one answer.
    ("ollama", "tool_required"): "tool_choice",
    ("ollama", "tool_named"): "tool_choice",
    ("ollama", "n2"): "n",
    # Ollama, Gemini on AI Studio and Bedrock take images as bytes: the gateway fetches an
    # image URL through its guard (no loopback, private or link-local hosts; size
    # and time caps). The matrix's URL names no public host this sandbox can
    # reach, so these cells show the guard's clear refusal; a successful guarded
    # fetch is tested in services/provider-adapter/src/fetch with a test-only
    # allowance for loopback.
    ("ollama", "vision_url"): "messages[0].content[1].image_url",
    ("google", "vision_url"): "messages[0].content[1].image_url",
    ("bedrock", "vision_url"): "messages[0].content[1].image_url",
    # Groq refuses n > 1.
    ("groq", "n2"): "n",
}

#: Cells that fail because of a known bug (gateway or emulator), with the reason. The table
#: shows them as "❌ known bug"; fix the bug, then remove the entry.
KNOWN_BROKEN: dict[tuple[str, str], str] = {}

# ---------------------------------------------------------------------------------------

DOC = ROOT / "docs" / "providers.md"
UPDATE = os.environ.get("LLMGW_UPDATE_MATRIX") == "1"
WORKERS = 4

PASS, BY_DESIGN_CELL, KNOWN_BUG, FAIL, NOT_IN_BUILD = (
    "✅ pass",
    "⛔ 400 by design",
    "❌ known bug",
    "❌ FAIL",
    "not in this build",
)


class Results:
    def __init__(self, gw: MatrixGateway, outcomes: dict[tuple[str, str], Outcome]) -> None:
        self.missing = set(gw.missing)
        self.outcomes = outcomes


def run_matrix(gw: MatrixGateway, emu: Emulator) -> dict[tuple[str, str], Outcome]:
    client = gw.client()
    cells = [(row, cap) for row in gw.rows for cap in CAPABILITIES]
    mode = gw.gateway.mode
    emu.clear()

    def one(item: tuple) -> tuple[tuple[str, str], Outcome]:
        row, cap = item
        cell = Cell(row=row, client=client, emu=emu, tag=f"tag-{mode}-{row.name}-{cap.id.replace('_', '-')}")
        return (row.id, cap.id), run_cell(cap.check, cell)

    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(pool.map(one, cells))


def _results(mode: str, emulator: Emulator, tmp: Path, missing: set[str] | None) -> Results:
    gw = start_matrix_gateway(mode, emulator, tmp, missing)
    try:
        return Results(gw, run_matrix(gw, emulator))
    finally:
        gw.close()
        if os.environ.get("LLMGW_KEEP_TMP") is None:
            shutil.rmtree(tmp / "data", ignore_errors=True)


@pytest.fixture(scope="module")
def matrix_all(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    yield _results("all", emulator, tmp_path_factory.mktemp("matrix-all"), None)


@pytest.fixture(scope="module")
def matrix_split(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory, matrix_all: Results) -> Iterator[Results]:
    yield _results("split", emulator, tmp_path_factory.mktemp("matrix-split"), matrix_all.missing)


def expected(row: str, cap: str) -> str:
    if (row, cap) in BY_DESIGN:
        return "by_design"
    if (row, cap) in KNOWN_BROKEN:
        return "known_broken"
    return "pass"


def test_declarations_are_well_formed() -> None:
    for table in (BY_DESIGN, KNOWN_BROKEN):
        for row, cap in table:
            assert row in ROW_IDS and cap in CAP_IDS, f"unknown cell ({row!r}, {cap!r})"
    both = set(BY_DESIGN) & set(KNOWN_BROKEN)
    assert not both, f"declared both by design and known broken: {both}"
    assert all(isinstance(p, str) and p for p in BY_DESIGN.values())
    assert all(isinstance(r, str) and r for r in KNOWN_BROKEN.values())


@pytest.mark.parametrize("cap", CAP_IDS)
@pytest.mark.parametrize("row", ROW_IDS)
@pytest.mark.parametrize("mode", ["all", "split"])
def test_cell(request: pytest.FixtureRequest, mode: str, row: str, cap: str) -> None:
    results: Results = request.getfixturevalue(f"matrix_{mode}")
    if row in results.missing:
        pytest.skip(f"provider type `{row}` is not in this build")
    got = results.outcomes[(row, cap)]
    want = expected(row, cap)
    where = f"{row} x {cap} ({mode})"
    if want == "pass":
        assert got.kind == "pass", (
            f"{where}: expected to pass, got {got.kind}: {got.detail}"
            + ("\n(a clean 400: if intended, declare it in BY_DESIGN)" if got.kind == "by_design" else "")
        )
    elif want == "by_design":
        assert got.kind == "by_design", f"{where}: declared 400 by design, got {got.kind}: {got.detail}"
        assert got.param == BY_DESIGN[(row, cap)], (
            f"{where}: the 400 names param {got.param!r}, declared {BY_DESIGN[(row, cap)]!r}: {got.detail}"
        )
    else:
        assert got.kind == "fail", (
            f"{where}: listed in KNOWN_BROKEN ({KNOWN_BROKEN[(row, cap)]}) but now {got.kind}: "
            "remove it from KNOWN_BROKEN (and declare it in BY_DESIGN if it is a clean 400)"
        )


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------


def cell_text(results: Results, row: str, cap: str) -> str:
    if row in results.missing:
        return NOT_IN_BUILD
    got = results.outcomes[(row, cap)]
    if got.kind == "pass":
        return PASS
    if got.kind == "by_design":
        return BY_DESIGN_CELL
    return KNOWN_BUG if (row, cap) in KNOWN_BROKEN else FAIL


def render(results: Results) -> str:
    labels = {c.id: c.label for c in CAPABILITIES}
    out = [
        "# Providers: the translation matrix",
        "",
        "<!-- generated by tests/python/test_matrix.py; do not edit by hand -->",
        "",
        "What each provider does with each OpenAI Chat Completions capability, sent through",
        "llmgw's public OpenAI interface with the official `openai` Python SDK (every provider",
        "against its emulator, in one process and split into five). Regenerate with",
        "`LLMGW_UPDATE_MATRIX=1 make test-python`.",
        "",
        "| provider | " + " | ".join(labels[c] for c in CAP_IDS) + " |",
        "|---|" + "---|" * len(CAP_IDS),
    ]
    for r in ROWS:
        out.append(f"| {r.label} | " + " | ".join(cell_text(results, r.id, c) for c in CAP_IDS) + " |")
    out += [
        "",
        "Legend:",
        "",
        f"- {PASS}: worked end to end (the answer's content and shape are checked, not just the status).",
        f"- {BY_DESIGN_CELL}: the provider has no equivalent, so llmgw answers 400 before calling it,",
        "  with `param` naming the parameter and the message naming the provider (never a silent drop).",
        f"- {KNOWN_BUG}: a known bug, listed below; it is being fixed.",
        f"- {FAIL}: an unexpected failure.",
        f"- {NOT_IN_BUILD}: this build of llmgw does not have the provider type yet.",
    ]
    refused = [(r, c) for r in ROWS for c in CAP_IDS if cell_text(results, r.id, c) == BY_DESIGN_CELL]
    if refused:
        out += ["", "## Refused by design", "", "| provider | capability | `param` of the 400 |", "|---|---|---|"]
        out += [f"| {r.label} | {labels[c]} | `{results.outcomes[(r.id, c)].param}` |" for r, c in refused]
    broken = [(r, c) for r in ROWS for c in CAP_IDS if cell_text(results, r.id, c) == KNOWN_BUG]
    if broken:
        out += ["", "## Known bugs", "", "| provider | capability | bug |", "|---|---|---|"]
        out += [f"| {r.label} | {labels[c]} | {KNOWN_BROKEN[(r.id, c)]} |" for r, c in broken]
    out += ["", "generated by tests/python/test_matrix.py", ""]
    return "\n".join(out)


def test_providers_md(matrix_all: Results, matrix_split: Results) -> None:
    text = render(matrix_all)
    split = render(matrix_split)
    assert split == text, "the split deployment gives a different matrix than one process"
    if UPDATE:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
        return
    current = DOC.read_text() if DOC.exists() else ""
    assert current == text, (
        f"{DOC.relative_to(ROOT)} is stale: run `LLMGW_UPDATE_MATRIX=1 make test-python` and commit it"
    )
