"""Run what users run as written: a user-guide page's python blocks in order, comparing what
they print (the rule of tests/test_docs.py), and the scripts under examples/."""

import contextlib
import io
import runpy
import sys
from pathlib import Path

import torch

from tests.test_docs import _clean, python_blocks

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(script: str, monkeypatch, *args) -> dict:
    """Run examples/<script> as ``python examples/<script> args...``; returns its globals."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    return runpy.run_path(str(EXAMPLES / script), run_name="__main__")


def run_page(page: str, minimum_blocks: int = 3) -> dict:
    """Execute docs/<page>; every ```python block followed by a ```text block must print exactly that text."""
    path = DOCS / page
    blocks = python_blocks(path.read_text())
    assert len(blocks) >= minimum_blocks, (
        f"{page}: expected at least {minimum_blocks} python blocks, found {len(blocks)}"
    )
    namespace = {"__name__": f"docs.{path.stem}"}
    default_dtype = torch.get_default_dtype()  # pages set it as a user would; later tests must not inherit it
    try:
        for block in blocks:
            code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(code, namespace)
            if block.expected is not None:
                assert _clean(out.getvalue()) == _clean(block.expected), (
                    f"{page}:{block.line}: the block printed\n{out.getvalue()}\nbut the page shows\n{block.expected}"
                )
    finally:
        torch.set_default_dtype(default_dtype)
    return namespace
