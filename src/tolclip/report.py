"""Collect the zero-shot CSVs of a multirun into one table: `python -m tolclip.report SWEEP_DIR`.

For the text-type ablation this gives training text type × evaluation text type × rank, for
seen and unseen species, as BioCLIP's Table 5 does for its text types.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from tolclip.taxonomy import RANKS


def collect(sweep_dir: str | Path, filename: str = "zero_shot.csv") -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(Path(sweep_dir).rglob(filename)):
        with path.open() as fh:
            rows.extend(csv.DictReader(fh))
    if not rows:
        raise FileNotFoundError(f"no {filename} under {sweep_dir}: did the runs finish?")
    return rows


def pivot(rows: Sequence[dict[str, str]], metric: str = "top1") -> tuple[list[str], list[list[str]]]:
    """Rows: (train text type, eval text type, eval set); columns: ranks."""
    ranks = [r for r in RANKS if any(row["rank"] == r for row in rows)]
    table: dict[tuple[str, str, str], dict[str, str]] = {}
    for row in rows:
        key = (row.get("train_text_type", ""), row["text_type"], row["eval_set"])
        table.setdefault(key, {})[row["rank"]] = f"{100 * float(row[metric]):.1f}"
    header = ["train text", "eval text", "eval set", *ranks]
    body = [[*key, *(cells.get(r, "-") for r in ranks)] for key, cells in sorted(table.items())]
    return header, body


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir")
    parser.add_argument("--metric", default="top1", choices=["top1", "top5"])
    parser.add_argument("--out", help="also write the markdown table here (default: SWEEP_DIR/table.md)")
    args = parser.parse_args(argv)
    header, body = pivot(collect(args.sweep_dir), args.metric)
    text = markdown(header, body)
    print(f"zero-shot {args.metric} (%), by training and evaluation text type\n{text}")
    out = Path(args.out or Path(args.sweep_dir) / "table.md")
    out.write_text(text + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
