"""The notebooks in notebooks/ as committed: clean files a reader can run top to bottom.

`make notebooks` executes them (nbmake); these are the fast checks on the files themselves: no outputs
or execution counts saved (they would go stale and bloat diffs), a title, a parameter cell that says how
to point the notebook at your own model or data, and no absolute paths from someone's machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# Absolute paths that only exist on the machine a notebook was written on.
MACHINE_PATH = re.compile(r"""["'](/work/|/tmp/|/home/|/Users/|[A-Z]:\\\\)""")


def _cells(path: Path) -> list[dict]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb.get("nbformat") == 4, f"{path.name}: not an nbformat 4 notebook"
    return nb["cells"]


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_saved_without_outputs(path: Path) -> None:
    cells = _cells(path)
    dirty = [
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} keep outputs or execution counts; clear them before committing"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_title_and_a_parameter_cell_first(path: Path) -> None:
    cells = _cells(path)
    assert cells and cells[0]["cell_type"] == "markdown" and _source(cells[0]).startswith("# "), (
        f"{path.name}: the first cell should be a markdown title"
    )
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, f"{path.name}: no code cells"
    first = _source(code[0])
    assert first.lstrip().startswith("# Parameters"), (
        f"{path.name}: the first code cell should be the parameter cell ('# Parameters: ...')"
    )
    assert re.search(r"^[A-Z_]+ = ", first, re.M), f"{path.name}: the parameter cell sets no UPPER_CASE names"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_machine_paths(path: Path) -> None:
    found = [(i, m.group(1)) for i, c in enumerate(_cells(path)) for m in MACHINE_PATH.finditer(_source(c))]
    assert not found, (
        f"{path.name}: absolute paths from a machine in cells {found}; derive them from the repo"
    )
