"""Every experiment config composes, and the sweep report pivots zero-shot CSVs."""

import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tolclip.cli.report import main
from tolclip.core.captions import MIXED, TEXT_TYPES
from tolclip.core.resources import config_dir
from tolclip.evaluation.report import collect, pivot

CONFIG_DIR = str(config_dir())


def compose_train(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("text_type", [*TEXT_TYPES, MIXED])
def test_text_type_experiments(text_type):
    cfg = compose_train(["experiment=text_type", f"data.text_type={text_type}"])
    assert cfg.data.text_type == text_type
    assert list(cfg.callbacks.zero_shot.text_types) == list(TEXT_TYPES)
    assert cfg.task_name == f"text_{text_type}"


def test_real_photo_text_type_experiment():
    cfg = compose_train(["experiment=text_type_real", "data.text_type=com", "seed=3", "paths.root_dir=/r"])
    assert cfg.task_name == "real_text_com" and cfg.seed == 3
    assert cfg.data.train_shards == "/r/data/shared_holdout/train/shard-*.tar"
    assert cfg.data.eval_sets.unseen == "/r/data/shared_holdout/unseen/shard-*.tar"
    assert list(cfg.callbacks.zero_shot.text_types) == list(TEXT_TYPES)


@pytest.mark.parametrize("model,trainer", [("tiny", "cpu"), ("vit_b16", "gpu"), ("vit_b16", "ddp")])
def test_model_and_trainer_groups_compose(model, trainer):
    cfg = compose_train(
        [
            f"model={model}",
            f"trainer={trainer}",
            "data=shards",
            "data.train_shards=x.tar",
            "data.epoch_samples=10",
        ]
    )
    assert cfg.data.image_size == cfg.model.net.vision.image_size
    if model == "vit_b16":
        assert cfg.model.optimizer.lr == 1e-4 and cfg.model.scheduler.warmup_steps == 1000
        assert cfg.model.net.vision.act == "quick_gelu"
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.use_distributed_sampler is False


def write_run(path: Path, train_type: str, rows: list[tuple[str, str, str, float]]) -> None:
    path.mkdir(parents=True)
    with (path / "zero_shot.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "train_text_type",
                "text_type",
                "eval_set",
                "rank",
                "images",
                "classes",
                "top1",
                "top5",
                "chance",
            ]
        )
        for text_type, eval_set, rank, top1 in rows:
            w.writerow([train_type, text_type, eval_set, rank, 10, 4, top1, 1.0, 0.25])


def test_report_pivots_runs(tmp_path, capsys):
    write_run(
        tmp_path / "0", "taxon", [("taxon", "unseen", "genus", 0.5), ("taxon", "unseen", "species", 0.125)]
    )
    write_run(tmp_path / "1", "com", [("taxon", "unseen", "genus", 0.25)])
    header, body = pivot(collect(tmp_path))
    assert header == ["train text", "eval text", "eval set", "genus", "species"]
    assert body == [
        ["com", "taxon", "unseen", "25.0", "-"],
        ["taxon", "taxon", "unseen", "50.0", "12.5"],
        ["chance", "", "unseen", "25.0", "25.0"],
    ]
    main([str(tmp_path)])
    table = (tmp_path / "table.md").read_text()
    assert "| taxon | taxon | unseen | 50.0 | 12.5 |" in table
    # The headline: each training text type with its own evaluation text, and chance.
    own = table.split("Every pair")[0]
    assert "| taxon | taxon | 50.0 | 12.5 |" in own and "| chance |  | 25.0 | 25.0 |" in own
    assert "| com |" not in own  # com was only evaluated with taxon names
    assert "50.0" in capsys.readouterr().out


def test_report_averages_seeds(tmp_path):
    write_run(tmp_path / "0", "taxon", [("taxon", "unseen", "genus", 0.5)])
    write_run(tmp_path / "1", "taxon", [("taxon", "unseen", "genus", 0.3)])
    _, body = pivot(collect(tmp_path))
    assert body[0] == ["taxon", "taxon", "unseen", "40.0 ± 14.1"]  # sample std of 50 and 30


def test_report_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="did the runs finish"):
        collect(tmp_path)
