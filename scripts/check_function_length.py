"""Fail when a function in the given folders is longer than the limit (default 60 lines, decorators
and docstring included): functions stay short enough to read at once. Used by `make lint` and a test."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

LIMIT = 60


def long_functions(root: Path, limit: int = LIMIT) -> list[tuple[Path, int, str, int]]:
    """(file, line, name, length) of every function or method under `root` longer than `limit`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - first + 1
                if length > limit:
                    found.append((path, first, node.name, length))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", default=[Path("src")], type=Path)
    parser.add_argument("--limit", type=int, default=LIMIT)
    args = parser.parse_args(argv)
    found = [f for root in args.roots for f in long_functions(root, args.limit)]
    for path, line, name, length in found:
        print(f"{path}:{line}: {name} is {length} lines (limit {args.limit})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
