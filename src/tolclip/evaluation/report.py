"""Collect a multirun's results into tables.

* `tolclip report SWEEP_DIR`: the zero-shot CSVs of a training sweep; for the text-type
  ablation, training text type × evaluation text type × rank, as BioCLIP's Table 5.
* `tolclip report --suite SWEEP_DIR [--wandb]`: the `results.json` of an eval-suite sweep;
  models as rows, tasks as columns plus their mean, one table per measure (zero-shot, 1-shot,
  5-shot top-1, linear probe), as BioCLIP's Table 4. Written as markdown and CSV, optionally to wandb.
  A number computed on part of a task says so (classes used / in the task, chance for that subset);
  a measure with too few usable classes reads "not computed" with the reason in the footnote.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
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


def _cell(values: Sequence[float]) -> str:
    """Percent; the mean ± standard deviation when several runs (seeds) share the cell."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def pivot(rows: Sequence[dict[str, str]], metric: str = "top1") -> tuple[list[str], list[list[str]]]:
    """Rows: (train text type, eval text type, eval set), then each eval set's chance (1/classes);
    columns: ranks. Runs that differ only in seed are averaged."""
    ranks = [r for r in RANKS if any(row["rank"] == r for row in rows)]
    table: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    chance: dict[str, dict[str, float]] = {}
    for row in rows:
        key = (row.get("train_text_type", ""), row["text_type"], row["eval_set"])
        table.setdefault(key, {}).setdefault(row["rank"], []).append(float(row[metric]))
        if row.get("chance"):
            chance.setdefault(row["eval_set"], {})[row["rank"]] = float(row["chance"])
    header = ["train text", "eval text", "eval set", *ranks]
    body = [
        [*key, *(_cell(cells[r]) if r in cells else "-" for r in ranks)]
        for key, cells in sorted(table.items())
    ]
    body += [
        ["chance", "", name, *(_cell([c[r]]) if r in c else "-" for r in ranks)]
        for name, c in sorted(chance.items())
    ]
    return header, body


# The evaluation text of each training text type in the summary: its own; `mixed` trains on all five, and
# is read with taxon + common name, the richest of them (the label index's default too).
OWN_EVAL_TEXT = {"mixed": "taxon_com"}


def own_text_tables(rows: Sequence[dict[str, str]], metric: str = "top1") -> str:
    """One markdown table per eval set: each training text type evaluated with its own text type, by
    rank, with the chance row: the ablation's headline, as BioCLIP's Table 5 reads."""
    header, body = pivot(rows, metric)
    out = []
    for eval_set in sorted({row["eval_set"] for row in rows}):
        mine = [r for r in body if r[2] == eval_set and r[1] == OWN_EVAL_TEXT.get(r[0], r[0])]
        chance = [r for r in body if r[2] == eval_set and r[0] == "chance"]
        if mine:
            table = [[r[0], r[1], *r[3:]] for r in mine + chance]
            out.append(f"**{eval_set}** ({metric}, %)\n\n" + markdown([*header[:2], *header[3:]], table))
    return "\n\n".join(out)


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


# measure name -> (where its entry sits in one results.json, the key of its number)
SUITE_MEASURES: dict[str, tuple[tuple[str, ...], str]] = {
    "zero-shot": (("zero_shot",), "top1"),
    "1-shot": (("few_shot", "1_shot"), "mean"),
    "5-shot": (("few_shot", "5_shot"), "mean"),
    "linear probe": (("few_shot", "linear_probe"), "mean"),
}
NOT_COMPUTED = "not computed"
SUITE_COLUMNS = [
    "model",
    "task",
    "measure",
    "top1",
    "std",
    "status",
    "classes_used",
    "classes_in_task",
    "images_used",
    "chance",
    "reason",
]
# Under every table: the rule behind its numbers and how to read a partial cell.
FOOTNOTES = {
    "zero-shot": "`(u/n cls)`: only u of the task's n classes had a readable image; every class competes, so "
    "chance is 1/n.",
    "few-shot": "A k-shot episode needs k support images plus at least 1 query per class; smaller classes are "
    "left out. `(u/n cls)`: computed on u of the task's n classes only, chance 1/u for that subset.",
    "linear probe": "The linear probe needs 1 train and 1 test image per class; smaller classes are left out. "
    "`(u/n cls)`: computed on u of the task's n classes only, chance 1/u for that subset.",
}
MEAN_NOTE = (
    "Fewer than 2 usable classes: `not computed` (reason below). Partial and not-computed cells are left "
    "out of the mean, which then says over how many of the tasks tried it runs."
)


def footnote(measure: str) -> str:
    return f"{FOOTNOTES.get(measure, FOOTNOTES['few-shot'])} {MEAN_NOTE}"


def collect_suite(sweep_dir: str | Path, filename: str = "results.json") -> list[dict]:
    results = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).rglob(filename))]
    if not results:
        raise FileNotFoundError(f"no {filename} under {sweep_dir}: did the eval-suite runs finish?")
    return results


@dataclass
class Cell:
    """One model × task × measure: its number and what it was computed on (status full | partial |
    not computed)."""

    status: str
    value: float | None = None
    std: float | None = None
    classes_used: int | None = None
    classes_in_task: int | None = None
    images_used: int | None = None
    chance: float | None = None
    reason: str = ""

    def text(self) -> str:
        if self.value is None:
            return NOT_COMPUTED
        out = f"{100 * self.value:.1f}" + ("" if self.std is None else f" ± {100 * self.std:.1f}")
        return out + (
            f" ({self.classes_used}/{self.classes_in_task} cls)" if self.status == "partial" else ""
        )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else None


def read_cell(result: dict, measure: str) -> Cell | None:
    """The measure's cell in one results.json; None when the run did not try it (e.g. no text tower)."""
    path, key = SUITE_MEASURES[measure]
    entry: object = result
    for part in path:
        entry = entry.get(part) if isinstance(entry, dict) else None
    if not isinstance(entry, dict):
        return None
    value = _number(entry.get(key))
    used = entry.get("classes_used", entry.get("classes"))
    in_task = entry.get("classes_in_task", result.get("classes"))
    if value is None:
        # Older results.json wrote a bare null: still "not computed", never a silent "-".
        reason = entry.get("reason") or "no class had enough images for this measure"
        images = entry.get("images_used")
        return Cell(
            NOT_COMPUTED, classes_used=used, classes_in_task=in_task, images_used=images, reason=reason
        )
    partial = entry.get("partial", isinstance(used, int) and isinstance(in_task, int) and used < in_task)
    return Cell(
        "partial" if partial else "full",
        value,
        _number(entry.get("std")),
        used,
        in_task,
        entry.get("images_used"),
        _number(entry.get("chance")),
    )


def suite_table(results: Sequence[dict], measure: str) -> tuple[list[str], list[list[str]]]:
    """Models × tasks (+ mean over the tasks computed on every class) in percent; "-" if not tried."""
    models = list(dict.fromkeys(r["model"] for r in results))
    tasks = sorted({r["task"] for r in results})
    cells = {(r["model"], r["task"]): read_cell(r, measure) for r in results}
    body = []
    for m in models:
        row = [cells.get((m, t)) for t in tasks]
        # A subset figure is not the task's result, so only whole-task numbers make the mean.
        full = [c.value for c in row if c is not None and c.status == "full" and c.value is not None]
        mean = "-" if not full else f"{100 * sum(full) / len(full):.1f}"
        tried = sum(c is not None for c in row)
        if full and len(full) < tried:
            mean += f" ({len(full)}/{tried} tasks)"
        body.append([m, *("-" if c is None else c.text() for c in row), mean])
    return ["model", *tasks, "mean"], body


def suite_notes(results: Sequence[dict], measure: str) -> list[str]:
    """Footnote lines for the cells of one measure that are partial or not computed."""
    notes = []
    for r in results:
        c = read_cell(r, measure)
        if c is None or c.status == "full":
            continue
        where = f"{r['model']} on {r['task']}"
        if c.status == NOT_COMPUTED:
            notes.append(f"- {where}: {NOT_COMPUTED}: {c.reason}")
        else:
            chance = "?" if c.chance is None else f"{100 * c.chance:.1f}%"
            # Zero-shot scores the images it has against every class: chance stays over the task.
            over = "over all classes" if measure == "zero-shot" else "for that subset"
            images = "" if c.images_used is None else f" ({c.images_used} images)"
            notes.append(
                f"- {where}: {c.classes_used} of {c.classes_in_task} classes{images}, "
                f"{c.classes_in_task - c.classes_used} left out; chance {over} {chance}"
            )
    return notes


def suite_rows(results: Sequence[dict]) -> list[dict[str, object]]:
    """Long format for CSV / wandb: one row per model, task and measure tried, with its coverage."""
    rows: list[dict[str, object]] = []
    for r in results:
        for measure in SUITE_MEASURES:
            c = read_cell(r, measure)
            if c is None:
                continue
            row = {"model": r["model"], "task": r["task"], "measure": measure, "top1": c.value, "std": c.std}
            row |= {"status": c.status, "classes_used": c.classes_used, "classes_in_task": c.classes_in_task}
            rows.append(row | {"images_used": c.images_used, "chance": c.chance, "reason": c.reason})
    return rows


def write_suite(sweep_dir: str | Path, use_wandb: bool = False) -> str:
    """Print-ready markdown of every measure; also `suite_table.md` and `suite_table.csv` in the sweep."""
    results = collect_suite(sweep_dir)
    parts = []
    for measure in SUITE_MEASURES:
        header, body = suite_table(results, measure)
        if any(cell != "-" for row in body for cell in row[1:]):
            notes = "\n".join([footnote(measure), *suite_notes(results, measure)])
            parts.append(f"### {measure} top-1 (%)\n\n{markdown(header, body)}\n\n{notes}")
    text = "\n\n".join(parts)
    out = Path(sweep_dir)
    (out / "suite_table.md").write_text(text + "\n")
    rows = suite_rows(results)
    with (out / "suite_table.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUITE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if use_wandb:
        import wandb

        from tolclip.evaluation.wandb_runs import init_run, report_names

        # In the group of the sweep's jobs; offline unless the user has logged in and set WANDB_MODE=online.
        project, names = report_names(out)
        offline = os.environ.get("WANDB_MODE", "offline") in ("offline", "dryrun")
        run = init_run(names, out, project, offline)
        run.log(
            {
                "eval_suite": wandb.Table(
                    columns=SUITE_COLUMNS, data=[[r[c] for c in SUITE_COLUMNS] for r in rows]
                )
            }
        )
        run.finish()
    return text
