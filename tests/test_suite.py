"""The benchmark suite: tasks from configs, cached features, every measure, the multirun and its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import safetensors.torch
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from tolclip.core.resources import config_dir
from tolclip.data.transforms import Preprocess
from tolclip.evaluation.features import FeatureCache, extract_image_features
from tolclip.evaluation.report import NOT_COMPUTED, suite_table, write_suite
from tolclip.evaluation.suite import EvalModel, evaluate, load_eval_model
from tolclip.evaluation.tasks import TaskError, load_task
from tolclip.training.run import train

from helpers import MICRO, make_cfg

CONFIG_DIR = str(config_dir())

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/data not present (only in the dev/CI checkout)"
)
PAPER_TASKS = [
    "birds525",
    "plankton",
    "insects",
    "insects2",
    "plantnet",
    "fungi",
    "plantvillage",
    "medicinal_leaf",
    "plantdoc",
    "rare_species",
]
SHARED_TASKS = ["shared_butterflies", "shared_tiny_imagenet", "shared_mushrooms"]
FAST = ["suite.templates=single", "suite.few_shot.folds=2", "suite.intrinsic.max_points=60"]


def task_config(name: str, *overrides: str) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("eval_suite", overrides=[f"paths.root_dir={ROOT}", f"suite/task={name}", *overrides])
    return OmegaConf.to_container(cfg.task, resolve=True)


def suite_config(*overrides: str) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("eval_suite", overrides=[f"paths.root_dir={ROOT}", *FAST, *overrides])
    return OmegaConf.to_container(cfg.suite, resolve=True)


# ------------------------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_paper_task_configs_point_at_the_users_copy(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TOLCLIP_BENCHMARKS", str(tmp_path / "bench"))
    cfg = task_config(name)
    assert cfg["name"] == name and cfg["label_type"] in ("asis", "taxon_com")
    where = str(tmp_path / "bench")
    assert any(str(v).startswith(where) for v in cfg["source"].values())
    with pytest.raises(TaskError, match=name):  # not downloaded: a clear error naming the task
        load_task(cfg)


@needs_shared
def test_shared_tasks_load_held_out_splits() -> None:
    sizes = {}
    for name in SHARED_TASKS:
        task = load_task(task_config(name))
        sizes[name] = (len(task.paths), len(task.classes))
        assert task.problems == [] and task.unnamed == 0
        assert all(any(t.ranks) for t in task.classes)
    assert sizes["shared_butterflies"] == (500, 100)
    assert sizes["shared_mushrooms"] == (133, 4)
    # 60 wnids; the dog breeds (and cat breeds) share a species, so taxonomic names merge them.
    assert sizes["shared_tiny_imagenet"][0] == 3000 and sizes["shared_tiny_imagenet"][1] < 60
    assert len(load_task(task_config("shared_tiny_imagenet", "task.label_type=asis")).classes) == 60


@needs_shared
def test_two_folder_names_for_one_species_are_one_class_unless_asis() -> None:
    # butterflies-100 files Polygonia interrogationis as POLYGONIA (train) and QUESTION MARK (test).
    over = ["task.source.splits=[train,test]", "task.max_per_class=1"]
    named = load_task(task_config("shared_butterflies", *over))
    asis = load_task(task_config("shared_butterflies", *over, "task.label_type=asis"))
    assert len(asis.classes) == len(named.classes) + 1
    assert {"POLYGONIA", "QUESTION MARK"} <= set(asis.class_names())
    assert sum("Polygonia interrogationis" in n for n in named.class_names("sci")) == 1


def test_task_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    spec = {"kind": "image_folder", "root": str(tmp_path), "splits": []}
    with pytest.raises(TaskError, match="label type"):
        load_task({"name": "t", "label_type": "latin", "source": spec})
    with pytest.raises(TaskError, match="two classes"):
        load_task({"name": "t", "label_type": "asis", "source": spec})
    with pytest.raises(TaskError, match="kind"):
        load_task({"name": "t", "source": {"root": str(tmp_path)}})


# ---------------------------------------------------------------------------------------- features


def test_unreadable_images_are_listed_and_features_cached(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 12), (50 * i, 10, 200 - 30 * i)).save(p)
        paths.append(str(p))
    (tmp_path / "2.png").write_bytes(b"not a png")
    calls = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.mean(dim=(2, 3))

    transform = Preprocess(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).transform()
    cache = FeatureCache(tmp_path / "cache")
    compute = lambda: vars(extract_image_features(encode, transform, paths, batch_size=2))  # noqa: E731
    first = cache.get("image", "k1", compute)
    assert first["index"].tolist() == [0, 1, 3, 4]
    assert first["failed"] == [f"{paths[2]}: not an image"]
    assert torch.allclose(first["features"].norm(dim=-1), torch.ones(4))
    again = cache.get("image", "k1", compute)
    assert cache.hits == 1 and sum(calls) == 4 and torch.equal(again["features"], first["features"])
    (tmp_path / "cache" / "image-k1.pt").write_bytes(b"garbage")  # a broken cache file is recomputed
    assert torch.equal(cache.get("image", "k1", compute)["features"], first["features"]) and sum(calls) == 8


# ----------------------------------------------------------------------------------- whole models


def write_open_clip_folder(out: Path, seed: int = 0) -> Path:
    """A small random open_clip CLIP (QuickGELU) saved as a release folder, in open_clip's own names."""
    model_cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    }
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**{k: v for k, v in model_cfg.items() if k != "quick_gelu"}, quick_gelu=True)
    out.mkdir(parents=True)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items() if k != "attn_mask"},
        out / "open_clip_model.safetensors",
    )
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return out


@pytest.fixture
def trained_run(small_shards: Path, tmp_path: Path) -> Path:
    """A micro tolclip trained a few steps, with its run folder as `@hydra.main` leaves it."""
    cfg = make_cfg(
        tmp_path,
        [
            "data=shards",
            f"data.train_shards={small_shards}/train/shard-*.tar",
            f"+data.eval_sets.val={small_shards}/val/shard-*.tar",
            "data.epoch_samples=16",
            "data.batch_size=8",
            "data.num_workers=0",
            "data.shuffle_buffer=8",
            "logger=csv",
            "callbacks.zero_shot=null",
            "~callbacks.progress_bar",
            "trainer.max_epochs=1",
            *MICRO,
        ],
    )
    train(cfg)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, run / ".hydra" / "config.yaml")
    return run


@needs_shared
def test_every_measure_for_a_trained_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    model = load_eval_model({"kind": "tolclip", "path": "latest"}, log_dir=_as_log_dir(trained_run, tmp_path))
    assert model.has_text and model.preprocess.image_size == 32
    task = load_task(task_config("shared_mushrooms", "task.max_per_class=12"))
    cache = FeatureCache(tmp_path / "cache")
    out = tmp_path / "out"
    result = evaluate(model, task, suite_config(), cache, out)
    assert json.loads((out / "results.json").read_text()) == result
    assert result["features"] == len(task.paths) == 48 and result["unreadable"] == []
    zs = result["zero_shot"]
    assert 0 <= zs["top1"] <= zs["top5"] == 1.0  # 4 classes: top-5 holds every class
    # One kingdom..class in the task, so those ranks have a single group and are left out.
    assert set(result["rank_level"]["summed"]) == {"order", "family", "genus", "species"}
    assert result["rank_level"]["summed"]["species"] == pytest.approx(zs["top1"])
    assert 0 <= result["rank_level"]["consistency_direct"] <= 1
    assert set(result["few_shot"]) == {"1_shot", "5_shot", "linear_probe"}
    assert len(result["few_shot"]["5_shot"]["folds"]) == 2
    assert sorted(Path(p).name for p in result["intrinsic"]["plots"])[0] == "tsne_class.png"
    assert (out / "per_class.csv").read_text().count("\n") == 5
    # A second run reads features and class embeddings from the cache.
    misses = cache.misses
    assert evaluate(model, task, suite_config(), cache)["zero_shot"] == zs and cache.misses == misses


def _as_log_dir(run: Path, tmp_path: Path) -> Path:
    """Put a run folder where `latest` looks: LOG_DIR/train/runs/<time>/checkpoints/last.ckpt."""
    log_dir = tmp_path / "logs"
    (log_dir / "train" / "runs").mkdir(parents=True)
    (log_dir / "train" / "runs" / "2026-01-01_00-00-00").symlink_to(run)
    return log_dir


@needs_shared
def test_image_only_model_gets_few_shot_but_no_zero_shot(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
    model = EvalModel("linear", "test", net, Preprocess(16, (0.5,) * 3, (0.5,) * 3), "k", None)
    task = load_task(task_config("shared_mushrooms", "task.max_per_class=8"))
    result = evaluate(model, task, suite_config("suite.intrinsic.enabled=false"), FeatureCache(None))
    assert "zero_shot" not in result and "rank_level" not in result
    assert 0 <= result["few_shot"]["1_shot"]["mean"] <= 1


@pytest.mark.heavy
@pytest.mark.slow
@needs_shared
def test_make_eval_suite_multirun_writes_the_table(trained_run: Path, tmp_path: Path) -> None:
    """The suite as `make eval-suite` runs it: models × tasks multirun, then the paper-shaped table."""
    conf = tmp_path / "conf" / "suite" / "model"
    conf.mkdir(parents=True)
    (conf / "t_ours.yaml").write_text(
        f"# @package model\nkind: tolclip\npath: {trained_run}/checkpoints/last.ckpt\nname: ours\n"
    )
    folder = write_open_clip_folder(tmp_path / "random_openclip")
    (conf / "t_random.yaml").write_text(f"# @package model\nkind: open_clip\npath: {folder}\nname: random\n")
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "tolclip.cli.suite",
        "-m",
        "suite/model=t_ours,t_random",
        "suite/task=shared_mushrooms,shared_butterflies",
        "task.max_per_class=6",
        *FAST,
        f"suite.cache_dir={tmp_path / 'cache'}",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"hydra.sweep.dir={sweep}",
        f"paths.root_dir={ROOT}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("zero-shot top-1") == 4
    text = write_suite(sweep, use_wandb=True)  # WANDB_MODE=offline (conftest): a local run
    assert list((sweep / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (sweep / "suite_table.md").read_text().strip() == text.strip()
    results = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    header, body = suite_table(results, "1-shot")
    assert header == ["model", "shared_butterflies", "shared_mushrooms", "mean"]
    assert sorted(row[0] for row in body) == ["ours", "random"] and all(
        c != "-" for row in body for c in row[1:]
    )
    # butterflies-100 has 5 test images per class: no query is left after 5 shots, so no number. It used
    # to read "-" like a measure never tried (issue 9); now "not computed", its reason in a footnote, and
    # the mean says it runs over one of the two tasks.
    _, body = suite_table(results, "5-shot")
    assert all(
        row[1] == NOT_COMPUTED and row[2] != "-" and row[3] == row[2].split(" ± ")[0] + " (1/2 tasks)"
        for row in body
    )
    assert "only 0 of" in text and "6 images (5 support + 1 query)" in text
    assert len(list(sweep.rglob("tsne_species.png"))) == 4
    # Every measure tried has a row, the butterflies 5-shot too (status "not computed", with its reason).
    assert (sweep / "suite_table.csv").read_text().count("\n") == 1 + 4 * 4


def test_missing_benchmark_is_one_line_not_a_trace(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "tolclip.cli.suite",
        "suite/task=birds525",
        "suite/model=random_openclip_b16",
        f"benchmark_dir={tmp_path / 'nowhere'}",
        f"paths.data_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("tolclip eval-suite: error:")
    assert "Traceback" not in done.stderr
