"""Hyperparameter search (hparams_search=optuna): the training entry point returns `optimized_metric`,
which the Optuna sweeper maximises over trials; a metric a run cannot produce is a clear error."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from tolclip.evaluation.zero_shot import RankResult
from tolclip.training.callbacks import SpeciesEvaluation, ZeroShotEvaluation
from tolclip.training.run import check_optimized_metric, final_metrics, optimized_value

from helpers import SYNTHETIC_MICRO, make_cfg, run_cli

METRIC = "zeroshot/taxon/unseen/genus/top1"  # configs/hparams_search/optuna.yaml's default
# Two trials of two steps each, every other setting from the search config.
MICRO_SEARCH = [
    "-m",
    "hparams_search=optuna",
    "hydra.sweeper.n_trials=2",
    "hydra.sweeper.n_jobs=1",
    *SYNTHETIC_MICRO,
    "logger=csv",
    "trainer.max_steps=2",
]


@pytest.fixture(autouse=True)
def optuna_logs_through_hydra():
    """Optuna's own log handler keeps the sys.stderr of its first import (an earlier test's capture,
    closed by now); without it, its lines go to the root logger that each Hydra run sets up."""
    import optuna

    optuna.logging.disable_default_handler()
    yield
    optuna.logging.enable_default_handler()


def _zero_shot_top1(run_dir: Path, text_type: str, eval_set: str, rank: str) -> float:
    with (run_dir / "zero_shot.csv").open() as fh:
        (row,) = [
            r
            for r in csv.DictReader(fh)
            if (r["text_type"], r["eval_set"], r["rank"]) == (text_type, eval_set, rank)
        ]
    return float(row["top1"])


def _trial_params(run_dir: Path) -> dict[str, float]:
    """The values the sweeper chose for one trial: its overrides that are search-space keys."""
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    pairs = (str(o).split("=", 1) for o in overrides)
    keys = ("model.optimizer.lr", "model.optimizer.weight_decay", "data.batch_size")
    return {k: float(v) for k, v in pairs if k in keys}


@pytest.mark.slow
def test_optuna_search_maximises_the_metric_the_runs_return(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    code, _, err = run_cli(
        capsys, "train", *MICRO_SEARCH, f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}"
    )
    assert code == 0, err[-3000:]
    results = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    best = results["best_value"]
    assert isinstance(best, float) and math.isfinite(best) and 0.0 <= best <= 1.0
    assert set(results["best_params"]) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "data.batch_size",
    }
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [t.name for t in trials] == ["0", "1"]
    # The trial the sweeper calls best ran with its best_params and wrote best_value in its table.
    (best_trial,) = [
        t for t in trials if _trial_params(t) == pytest.approx(dict(results["best_params"]), rel=1e-9)
    ]
    assert best == pytest.approx(_zero_shot_top1(best_trial, "taxon", "unseen", "genus"), abs=5e-5)
    assert best == pytest.approx(
        max(_zero_shot_top1(t, "taxon", "unseen", "genus") for t in trials), abs=5e-5
    )


def test_a_zero_shot_metric_the_config_cannot_produce_stops_before_training(tmp_path: Path, capsys) -> None:
    typo = "optimized_metric=zeroshot/taxon/unseen/genuss/top1"
    code, _, err = run_cli(
        capsys,
        "train",
        *MICRO_SEARCH,
        typo,
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 's'}",
    )
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("tolclip train: error: optimized_metric: 'zeroshot/taxon")
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing was trained
    cfg = make_cfg(tmp_path, [*SYNTHETIC_MICRO, "optimized_metric=zeroshot/taxon/unseen/genuss/top1"])
    with pytest.raises(ValueError, match=r"rank 'genuss' \(choose from .*'genus'"):
        check_optimized_metric(cfg)
    cfg = make_cfg(tmp_path, [*SYNTHETIC_MICRO, "optimized_metric=zeroshot/sci/unseen/genus/top1"])
    with pytest.raises(ValueError, match=r"text type 'sci' \(choose from \['taxon'\]\)"):
        check_optimized_metric(cfg)
    check_optimized_metric(make_cfg(tmp_path, [*SYNTHETIC_MICRO, f"optimized_metric={METRIC}"]))


def test_a_metric_the_run_lacks_names_the_ones_it_has() -> None:
    out = {"metrics": {"train/loss": 2.5, METRIC: 0.25}, "trainer": SimpleNamespace(is_global_zero=True)}
    assert optimized_value(out, METRIC) == 0.25
    assert optimized_value(out, None) is None
    with pytest.raises(ValueError, match=r"no metric 'val/acc'; it has: train/loss, zeroshot/taxon"):
        optimized_value(out, "val/acc")
    # DDP ranks other than 0 evaluate nothing: they return None instead of failing the job.
    out["trainer"] = SimpleNamespace(is_global_zero=False)
    assert optimized_value(out, "val/acc") is None


def test_final_metrics_hold_the_evaluation_tables_under_their_logged_names() -> None:
    zero_shot, classifier = ZeroShotEvaluation(text_types=["taxon"]), SpeciesEvaluation()
    zero_shot.results = [RankResult("taxon", "unseen", "genus", 10, 4, 0.5, 1.0)]
    classifier.results = [RankResult("classifier", "seen", "species", 10, 8, 0.25, 0.75)]
    trainer = SimpleNamespace(callback_metrics={"train/loss": 1.5}, callbacks=[zero_shot, classifier])
    assert final_metrics(trainer) == {
        "train/loss": 1.5,
        METRIC: 0.5,
        "zeroshot/taxon/unseen/genus/top5": 1.0,
        "classifier/seen/species/top1": 0.25,
        "classifier/seen/species/top5": 0.75,
    }
