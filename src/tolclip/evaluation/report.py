"""Collect a multirun's results into tables.

* `tolclip report SWEEP_DIR`: the zero-shot CSVs of a training sweep; for the text-type
  ablation, training text type × evaluation text type × rank, as BioCLIP's Table 5.
* `tolclip report --suite SWEEP_DIR [--wandb]`: the `results.json` of an eval-suite sweep;
  models as rows, tasks as columns plus their mean, one table per measure (zero-shot, 1-shot,
  5-shot top-1, linear probe), as BioCLIP's Table 4. Written as markdown and CSV, optionally to wandb.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from tolclip.core.taxonomy import RANKS


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


# measure name -> how to read it from one results.json
SUITE_MEASURES: dict[str, tuple[str, ...]] = {
    "zero-shot": ("zero_shot", "top1"),
    "1-shot": ("few_shot", "1_shot", "mean"),
    "5-shot": ("few_shot", "5_shot", "mean"),
    "linear probe": ("few_shot", "linear_probe", "mean"),
}


def collect_suite(sweep_dir: str | Path, filename: str = "results.json") -> list[dict]:
    results = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).rglob(filename))]
    if not results:
        raise FileNotFoundError(f"no {filename} under {sweep_dir}: did the eval-suite runs finish?")
    return results


def _read(result: dict, path: Sequence[str]) -> float | None:
    value: object = result
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else None


def suite_table(results: Sequence[dict], measure: str) -> tuple[list[str], list[list[str]]]:
    """Models × tasks (+ mean over the tasks the model has a number for) in percent; "-" if absent."""
    path = SUITE_MEASURES[measure]
    models = list(dict.fromkeys(r["model"] for r in results))
    tasks = sorted({r["task"] for r in results})
    cell = {(r["model"], r["task"]): _read(r, path) for r in results}
    body = []
    for m in models:
        values = [cell.get((m, t)) for t in tasks]
        known = [v for v in values if v is not None]
        mean = sum(known) / len(known) if known else None
        body.append([m, *("-" if v is None else f"{100 * v:.1f}" for v in (*values, mean))])
    return ["model", *tasks, "mean"], body


def suite_rows(results: Sequence[dict]) -> list[dict[str, object]]:
    """Long format for CSV / wandb: one row per model, task and measure."""
    rows = []
    for r in results:
        for measure, path in SUITE_MEASURES.items():
            value = _read(r, path)
            if value is not None:
                rows.append({"model": r["model"], "task": r["task"], "measure": measure, "top1": value})
    return rows


def write_suite(sweep_dir: str | Path, use_wandb: bool = False) -> str:
    """Print-ready markdown of every measure; also `suite_table.md` and `suite_table.csv` in the sweep."""
    results = collect_suite(sweep_dir)
    parts = []
    for measure in SUITE_MEASURES:
        header, body = suite_table(results, measure)
        if any(cell != "-" for row in body for cell in row[1:]):
            parts.append(f"### {measure} top-1 (%)\n\n{markdown(header, body)}")
    text = "\n\n".join(parts)
    out = Path(sweep_dir)
    (out / "suite_table.md").write_text(text + "\n")
    rows = suite_rows(results)
    with (out / "suite_table.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["model", "task", "measure", "top1"])
        writer.writeheader()
        writer.writerows(rows)
    if use_wandb:
        import wandb

        # Offline unless the user has logged in and set WANDB_MODE=online.
        run = wandb.init(
            project="tolclip",
            job_type="eval-suite",
            dir=str(out),
            mode=os.environ.get("WANDB_MODE", "offline"),
        )
        run.log(
            {
                "eval_suite": wandb.Table(
                    columns=["model", "task", "measure", "top1"], data=[list(r.values()) for r in rows]
                )
            }
        )
        run.finish()
    return text
