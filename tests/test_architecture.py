"""The package's shape is enforced: imports flow one way (import-linter), functions stay short,
and every subpackage ships in the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
from check_function_length import LIMIT, long_functions  # noqa: E402

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath), "HOME": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_layers_contract_is_kept() -> None:
    done = lint_imports(REPO, REPO / "src")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("lower", "higher"), [("core", "training"), ("data", "curate"), ("models", "curate")]
)
def test_the_contract_fails_when_a_lower_layer_imports_a_higher_one(
    tmp_path: Path, lower: str, higher: str
) -> None:
    shutil.copytree(
        REPO / "src" / "tolclip",
        tmp_path / "src" / "tolclip",
        ignore=shutil.ignore_patterns("__pycache__", "assets"),
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src" / "tolclip" / lower / "reaches_up.py").write_text(f"import tolclip.{higher}\n")
    done = lint_imports(tmp_path, tmp_path / "src")
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and f"tolclip.{lower}.reaches_up -> tolclip.{higher}" in done.stdout


def test_no_function_in_src_is_longer_than_the_limit() -> None:
    found = long_functions(REPO / "src")
    assert not found, "\n".join(f"{p}:{line}: {name} is {n} lines" for p, line, name, n in found)


def test_the_length_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(LIMIT))  # def line + LIMIT lines = LIMIT + 1
    (tmp_path / "long.py").write_text(f"@staticmethod\ndef short():\n    pass\n\n\ndef long():\n{body}")
    assert [(name, n) for _, _, name, n in long_functions(tmp_path)] == [("long", LIMIT + 1)]


def test_every_subpackage_ships_in_the_wheel() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    src = REPO / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in (src / "tolclip").rglob("__init__.py")}
    assert found | {"tolclip.configs"} == listed
