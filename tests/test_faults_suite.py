"""Issue 9, "a headline that overstates": a measure computed on part of a task says so, the same way
in every case, in results.json, the one-line summary and the report table (synthetic features, no images).

Before, a 5-shot figure on the 3 of 520 classes with 6+ images was shown as the task's result, while
the same protocol on a task where no class (or one) qualified gave a bare null ("-") or a trivial 100%.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tolclip.core.taxonomy import Taxon
from tolclip.data.transforms import Preprocess
from tolclip.evaluation import suite
from tolclip.evaluation.features import FeatureCache
from tolclip.evaluation.report import NOT_COMPUTED, suite_rows, suite_table, write_suite
from tolclip.evaluation.suite import EvalModel, evaluate, summary_line
from tolclip.evaluation.tasks import Task

FEW = {"ks": [1, 5], "folds": 2, "linear_probe": {"enabled": True, "max_iter": 200}}
CFG = {"zero_shot": False, "few_shot": FEW, "intrinsic": {"enabled": False}}


def synthetic_task(name: str, sizes: list[int]) -> tuple[Task, torch.Tensor]:
    """A task of len(sizes) classes with sizes[c] images each, and separable features for them."""
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(sizes), 16)) * 4
    feats = torch.from_numpy(centres[labels] + rng.normal(size=(len(labels), 16))).float()
    classes = [Taxon() for _ in sizes]
    task = Task(
        name,
        "asis",
        [f"{i}.jpg" for i in range(len(labels))],
        labels,
        classes,
        [f"c{c}" for c in range(len(sizes))],
    )
    return task, feats


def run(task: Task, feats: torch.Tensor, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The real `evaluate` with the image-feature step replaced by the synthetic features."""
    data = {"features": feats, "index": torch.arange(len(task.paths)), "failed": []}
    monkeypatch.setattr(suite, "_image_features", lambda *_: data)
    model = EvalModel("m", "test", lambda x: x, Preprocess(16), "key")
    result = evaluate(model, task, CFG, FeatureCache(None), out)
    assert json.loads((out / "results.json").read_text()) == result
    return result


@pytest.fixture
def sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """Three tasks: every class large enough; 3 of 40 classes with 6+ images; every class exactly 5."""
    specs = {"full": [10] * 6, "some": [10] * 3 + [5] * 37, "none": [5] * 8}
    return {n: run(*synthetic_task(n, sizes), tmp_path / n, monkeypatch) for n, sizes in specs.items()}


def test_subset_result_names_classes_images_and_chance(sweep: dict[str, dict], tmp_path: Path) -> None:
    five = sweep["some"]["few_shot"]["5_shot"]
    assert five["computed"] and five["partial"] and five["mean"] is not None
    assert (five["classes_used"], five["classes_in_task"], five["classes_left_out"]) == (3, 40, 37)
    assert five["images_used"] == 30 and five["chance"] == pytest.approx(1 / 3)
    assert "k support images plus at least 1 query" in five["rule"]
    # 1-shot and the probe use every class of the same task: not partial, chance over all 40.
    one = sweep["some"]["few_shot"]["1_shot"]
    assert not one["partial"] and one["classes_used"] == 40 and one["chance"] == pytest.approx(1 / 40)
    assert "(3/40 cls, chance 33.3%)" in summary_line(sweep["some"])

    _, body = suite_table(list(sweep.values()), "5-shot")  # columns: model, full, none, some, mean
    cell = body[0][3]
    assert cell.startswith(f"{100 * five['mean']:.1f} ± {100 * five['std']:.1f}") and cell.endswith(
        "(3/40 cls)"
    )
    # The mean is over whole-task numbers only, and says over how many of the tasks tried.
    assert body[0][4] == f"{100 * sweep['full']['few_shot']['5_shot']['mean']:.1f} (1/3 tasks)"

    text = write_suite(tmp_path)
    assert "k support images plus at least 1 query per class" in text
    assert "- m on some: 3 of 40 classes (30 images), 37 left out; chance for that subset 33.3%" in text
    with (tmp_path / "suite_table.csv").open() as fh:
        row = next(r for r in csv.DictReader(fh) if (r["task"], r["measure"]) == ("some", "5-shot"))
    assert row["status"] == "partial" and row["classes_used"] == "3" and row["classes_in_task"] == "40"
    assert float(row["chance"]) == pytest.approx(1 / 3) and row["images_used"] == "30"


def test_no_class_large_enough_is_not_computed_with_the_reason(
    sweep: dict[str, dict], tmp_path: Path
) -> None:
    five = sweep["none"]["few_shot"]["5_shot"]
    assert five["computed"] is False and five["mean"] is None and five["chance"] is None
    assert "only 0 of 8 classes have 6 images (5 support + 1 query)" in five["reason"]
    assert "5-shot not computed (only 0 of 8" in summary_line(sweep["none"])
    _, body = suite_table(list(sweep.values()), "5-shot")
    assert body[0][2] == NOT_COMPUTED  # not a "-", which means "not tried"
    text = write_suite(tmp_path)
    assert f"- m on none: {NOT_COMPUTED}: only 0 of 8 classes" in text
    row = next(r for r in suite_rows(list(sweep.values())) if (r["task"], r["measure"]) == ("none", "5-shot"))
    assert row["status"] == NOT_COMPUTED and row["top1"] is None and "5 support + 1 query" in row["reason"]


@pytest.mark.parametrize("large", [0, 1, 2, 3])
def test_one_rule_for_every_count_of_usable_classes(
    large: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The paths that disagreed (none usable: null; one: a trivial 100%; some: a bare subset figure)
    now give one entry shape, and fewer than 2 usable classes is never a number."""
    result = run(*synthetic_task("t", [10] * large + [5] * (6 - large)), tmp_path, monkeypatch)
    five = result["few_shot"]["5_shot"]
    keys = {"computed", "mean", "std", "folds", "classes_used", "classes_in_task", "images_used", "chance"}
    assert keys <= set(five) and five["classes_used"] == large and five["classes_in_task"] == 6
    assert five["computed"] == (large >= 2) == (five["mean"] is not None)
    cell = suite_table([result], "5-shot")[1][0][1]
    if large < 2:
        assert cell == NOT_COMPUTED and f"only {large} of 6 classes" in five["reason"]
    else:
        assert cell.endswith(f"({large}/6 cls)") and five["chance"] == pytest.approx(1 / large)


def test_linear_probe_follows_the_same_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = run(*synthetic_task("p", [8, 8, 8, 1, 1]), tmp_path, monkeypatch)["few_shot"]["linear_probe"]
    assert probe["partial"] and (probe["classes_used"], probe["classes_in_task"]) == (3, 5)
    assert probe["images_used"] == 24 and probe["chance"] == pytest.approx(1 / 3)
    lone = run(*synthetic_task("q", [8, 1, 1]), tmp_path / "q", monkeypatch)["few_shot"]["linear_probe"]
    assert lone["mean"] is None and "1 train + 1 test" in lone["reason"]


def test_older_results_json_reads_the_same_way() -> None:
    """A results.json written before coverage keys: the bare null is "not computed", the subset partial."""
    old = {"model": "m", "task": "t", "classes": 520}
    old["few_shot"] = {
        "1_shot": {"mean": 0.5, "std": 0.0, "folds": [0.5], "classes": 520, "classes_left_out": 0},
        "5_shot": {"mean": 0.48, "std": 0.087, "folds": [0.48], "classes": 3, "classes_left_out": 517},
    }
    _, body = suite_table([old], "5-shot")
    assert body[0][1] == "48.0 ± 8.7 (3/520 cls)" and body[0][2] == "-"
    old["few_shot"]["5_shot"] = {"mean": None, "std": None, "folds": [None], "classes": 0}
    assert suite_table([old], "5-shot")[1][0][1] == NOT_COMPUTED
    assert suite_table([old], "1-shot")[1][0][1:] == ["50.0 ± 0.0", "50.0"]


def test_zero_shot_with_classes_missing_reads_partial_with_chance_over_the_task() -> None:
    """Zero-shot uses the same coverage keys: a class with no readable image is a class left out."""
    entry = {"top1": 0.25, "top5": 0.5, "computed": True} | suite.coverage(7, 10, 70, 1 / 10)
    result = {"model": "m", "task": "t", "classes": 10, "zero_shot": entry}
    assert suite_table([result], "zero-shot")[1][0][1:] == ["25.0 (7/10 cls)", "-"]
    assert "(7/10 cls, chance 10.0%)" in summary_line(result)
    row = suite_rows([result])[0]
    assert (row["status"], row["classes_used"], row["chance"]) == ("partial", 7, 0.1)
