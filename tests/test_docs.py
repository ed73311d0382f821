"""The user guide's code runs: every ```python block of a page, in order, in one namespace.

A ```python block followed directly by a ```text block must print exactly that text, so
the numbers quoted in the docs are the numbers the code produces.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["getting_started.md", "differentiability.md", "optimisation.md", "hyperelasticity.md", "homogenisation.md"]

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass
class Block:
    line: int  # line of the first code line in the page (1-based)
    code: str
    expected: str | None  # the ```text block right after it, if any


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a markdown page with the output block that follows each."""
    fences = list(FENCE.finditer(text))
    blocks = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        expected = None
        if i + 1 < len(fences):
            after = fences[i + 1]
            if after.group(1) == "text" and not text[fence.end() : after.start()].strip():
                expected = after.group(2)
        line = text.count("\n", 0, fence.start(2)) + 1
        blocks.append(Block(line, fence.group(2), expected))
    return blocks


def test_fence_parser_pairs_code_with_its_output():
    page = (
        "intro\n```python\nprint(1)\n```\n\n```text\n1\n```\n```python\nx = 2\n```\nprose\n```text\nnot output\n```\n"
    )
    blocks = python_blocks(page)
    assert [(b.line, b.code, b.expected) for b in blocks] == [(3, "print(1)\n", "1\n"), (10, "x = 2\n", None)]


def _clean(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs_and_prints_what_the_page_shows(page):
    from tests.tmcore.docpages import run_page

    run_page(page, minimum_blocks=5)
