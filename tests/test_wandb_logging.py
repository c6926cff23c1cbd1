"""wandb for sweeps: runs named by the overrides that set them apart, one group per multirun, the zero-shot
table, training images with captions, throughput scalars (every logger), eval-suite jobs and the report.

Offline runs are read back from their files: `files/media/...` and the `.wandb` record log (LevelDB log
format: 32 KiB blocks of [crc32, length, type] chunks, each record a protobuf `Record`).
"""

from __future__ import annotations

import csv
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.hydra_config import HydraConfig

from tolclip.core.run_names import RunNames, hydra_run_names, run_name, sweep_group, swept_keys
from tolclip.training import throughput as throughput_module
from tolclip.training.run import train
from tolclip.training.throughput import Throughput

from helpers import SYNTHETIC_MICRO, make_cfg, shard_overrides, time_limit

_BLOCK = 32768
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type (1 full, 2 first, 3 middle, 4 last)


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """wandb offline, with every file it writes outside run folders inside tmp_path."""
    home = tmp_path / "wandb_home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    return home


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf records of an offline run's .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb record log"
    pos, pending = 7, b""
    while pos + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER.size:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if pos + _CHUNK_HEADER.size + length > len(data):  # still being written
            return
        if kind == 0:
            pos += room
            continue
        pending += data[pos + _CHUNK_HEADER.size : pos + _CHUNK_HEADER.size + length]
        pos += _CHUNK_HEADER.size + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_run(folder: Path, timeout_s: float = 30.0) -> tuple[object, set[str], Path]:
    """(run record, every history key, files/ folder) of the one offline run under `folder`. wandb's
    service process writes the log: read it again (bounded) until it holds the run's exit record."""
    (run_dir,) = folder.glob("wandb/offline-run-*")
    (log_file,) = run_dir.glob("*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        run, keys, finished = None, set(), False
        for record in wandb_records(log_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
            elif kind == "history":
                keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
            finished |= kind == "exit"
        if run is not None and finished:
            return run, keys, run_dir / "files"
        if time.monotonic() > deadline:
            pytest.fail(
                f"{log_file} holds no complete run (run record: {run is not None}) after {timeout_s:.0f} s"
            )
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------- names


def test_run_name_keeps_what_sets_a_run_apart() -> None:
    overrides = ["data.text_type=taxon", "model=micro", "+data.generate.train_per_species=2"]
    assert run_name(overrides, "train") == "text_type=taxon,model=micro,train_per_species=2"
    # In a sweep only the swept keys name the run; where the run writes or logs never does.
    assert run_name([*overrides, "logger=csv"], "train", swept={"data.text_type"}) == "text_type=taxon"
    assert (
        run_name(["logger=csv", "hydra.sweep.dir=x", "paths.root_dir=/r", "~callbacks.progress_bar"], "t")
        == "t"
    )
    assert run_name([], "train") == "train"
    # Keys whose last part collides stay whole; config groups keep their option.
    assert (
        run_name(["data.size=2", "model.size=3", "suite/task=birds"], "x")
        == "data.size=2,model.size=3,task=birds"
    )
    assert run_name(["~callbacks.zero_shot"], "x") == "~zero_shot"
    assert len(run_name([f"data.train_shards=/very/long/{'p' * 300}"], "x")) == 128


def test_swept_keys_and_one_group_per_sweep(tmp_path: Path) -> None:
    keys = swept_keys(
        ["data.text_type=taxon,com", "model=micro", "+x=range(1,3)", "y=choice(a,b)"],
        {"model.lr": "interval(0,1)"},
    )
    assert keys == {"data.text_type", "x", "y", "model.lr"}
    assert sweep_group(tmp_path / "logs" / "train" / "multiruns" / "2026-12-02_06-35-11_ab12") == (
        "train-2026-12-02_06-35-11_ab12"
    )
    reused = (
        tmp_path / "sweep-text-types"
    )  # `make sweep-text-types` writes here every time: the start time tells
    reused.mkdir()
    (reused / "multirun.yaml").write_text("hydra: {}\n")
    assert sweep_group(reused).startswith("sweep-text-types_2") and sweep_group(reused) == sweep_group(reused)


def test_names_without_a_running_hydra_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # a config from `compose`, a plain script
    assert hydra_run_names("eval-suite", "eval_suite") == RunNames("eval_suite", None, "eval-suite")
    assert hydra_run_names("train", "train", name="mine", group="g").name == "mine"
    # A composed config with Hydra's config set: a single run, named by its overrides, with no group.
    cfg = make_cfg(tmp_path, ["data.text_type=taxon", "logger=csv"])
    assert hydra_run_names("train", cfg.task_name) == RunNames("text_type=taxon", None, "train")


def test_wandb_logger_derives_name_and_group_unless_given(tmp_path: Path) -> None:
    import hydra

    def init_args(cfg) -> tuple:
        logger = hydra.utils.instantiate(cfg.logger.wandb, _convert_="all")  # wandb.init waits for first use
        return logger._wandb_init["name"], logger._wandb_init["group"], logger._wandb_init["job_type"]

    assert init_args(make_cfg(tmp_path / "a", ["data.text_type=taxon"])) == ("text_type=taxon", None, "train")
    given = make_cfg(tmp_path / "b", ["logger.wandb.name=mine", "logger.wandb.group=g"])
    assert init_args(given) == ("mine", "g", "train")


# -------------------------------------------------------------------------------------- throughput


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throughput_measures_samples_per_second_and_data_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batches of 8 on each of 2 ranks in 6 s of wall time, 2 s of it between batches (a fake clock)."""
    clock = _FakeClock()
    monkeypatch.setattr(throughput_module.time, "perf_counter", clock)
    logged: list[tuple[dict, int]] = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((dict(metrics), step)))
    trainer = SimpleNamespace(
        log_every_n_steps=2, world_size=2, is_global_zero=True, loggers=[logger], global_step=7
    )
    cb = Throughput()
    batch = {"image": __import__("torch").zeros(8, 3, 4, 4)}
    cb.on_train_epoch_start(trainer, None)
    for start, end in ((1.0, 3.0), (4.0, 6.0)):
        clock.now = start
        cb.on_train_batch_start(trainer, None, batch, 0)
        clock.now = end
        cb.on_train_batch_end(trainer, None, None, batch, 0)
    assert logged == [({"throughput/samples_per_s": 2 * 16 / 6, "throughput/data_wait_frac": 2 / 6}, 7)]
    with pytest.raises(ValueError, match="every_n_batches"):
        Throughput(every_n_batches=0)


def test_csv_runs_log_throughput_and_skip_wandb_media(small_shards: Path, tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        [*shard_overrides(small_shards), "trainer.max_epochs=1", "callbacks.throughput.every_n_batches=1"],
    )
    out = train(cfg)
    (cb,) = [c for c in out["trainer"].callbacks if isinstance(c, Throughput)]
    assert cb.last["throughput/samples_per_s"] > 0 and 0 <= cb.last["throughput/data_wait_frac"] <= 1
    (metrics,) = (tmp_path / "run" / "csv").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    waits = [float(r["throughput/data_wait_frac"]) for r in rows if r.get("throughput/data_wait_frac")]
    assert len(waits) == 2 and all(0 <= w <= 1 for w in waits)  # one per loader batch: 16 samples, 8 a batch
    assert (tmp_path / "run" / "zero_shot.csv").is_file() and not (tmp_path / "run" / "wandb").exists()


def test_caption_grid_reads_the_captions_back_from_the_tokens() -> None:
    import torch

    from tolclip.core.tokenizer import get_tokenizer
    from tolclip.training.dashboard import batch_captions, caption_grid

    tok = get_tokenizer(32)
    texts = [
        ["a photo of corvus corax.", "a photo of common raven."],
        ["a photo of pica pica.", "a photo of magpie."],
    ]
    mixed = torch.stack([tok(pair) for pair in texts])  # [B, types, L], as a `mixed` batch carries them
    # Image i shows text type i mod types: every kind of caption appears in the grid.
    assert batch_captions({"text": mixed}, ("sci", "com"), 2) == [
        "sci: a photo of corvus corax.",
        "com: a photo of magpie.",
    ]
    assert batch_captions({"text": mixed[:, 0]}, (), 2) == [
        "a photo of corvus corax.",
        "a photo of pica pica.",
    ]
    assert batch_captions({"species": [("Corvus", "corax")]}, (), 1) == ["Corvus corax"]
    grid = caption_grid(torch.rand(5, 3, 16, 16), ["a"] * 5)
    assert grid.mode == "RGB" and grid.width > grid.height  # 4 columns, 2 rows


# ------------------------------------------------------------------------------------ the sweep


@pytest.mark.slow
def test_micro_multirun_groups_and_names_runs_with_table_and_images(
    tmp_path: Path, wandb_env: Path, capsys: pytest.CaptureFixture
) -> None:
    from tolclip.cli.main import main

    sweep = tmp_path / "sweep"
    args = [
        "train",
        "-m",
        *SYNTHETIC_MICRO,
        "logger=wandb",
        "trainer.max_steps=2",
        "trainer.log_every_n_steps=1",
        "data.text_type=taxon,com",
        f"hydra.sweep.dir={sweep}",
        f"paths.root_dir={tmp_path}",
    ]
    with time_limit(400, "a 2-job micro multirun"):
        code = main(args)
    assert code == 0, capsys.readouterr().err[-3000:]
    runs = [offline_run(sweep / str(n)) for n in (0, 1)]
    assert {r.display_name for r, _, _ in runs} == {"text_type=taxon", "text_type=com"}
    (group,) = {r.run_group for r, _, _ in runs}
    assert group.startswith("sweep_2") and {r.job_type for r, _, _ in runs} == {"train"}
    # The run id kept in the run folder is the wandb run's (a requeued job continues it).
    assert [r.run_id for r, _, _ in runs] == [(sweep / str(n) / "wandb_id.txt").read_text() for n in (0, 1)]
    for _, keys, files in runs:
        assert {"zeroshot/table/_type", "train/samples/_type", "throughput/samples_per_s"} <= keys
        (table,) = files.glob("media/table/zeroshot/table_*.table.json")
        data = json.loads(table.read_text())
        assert data["columns"][:4] == ["train_text_type", "text_type", "eval_set", "rank"]
        assert {row[3] for row in data["data"]} >= {"kingdom", "species"}
        assert list(files.glob("media/images/train/samples_*.png"))


# ------------------------------------------------------------------------------ eval-suite, report

SUITE_RESULT = {
    "model": "ours",
    "task": "birds",
    "classes": 2,
    "zero_shot": {"top1": 0.5, "top5": 1.0, "computed": True, "classes_used": 2, "classes_in_task": 2},
    "few_shot": {"1_shot": {"mean": 0.25, "std": 0.1, "folds": [0.15, 0.35], "computed": True}},
    "intrinsic": {"silhouette": {"kingdom": None, "genus": 0.1, "species": 0.3}, "tree_distance_rho": 0.4},
}


def test_suite_job_and_its_report_log_to_one_group(
    tmp_path: Path, wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from tolclip.evaluation.report import write_suite
    from tolclip.evaluation.wandb_runs import log_suite_result

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # named by the settings, not a leftover config
    job = tmp_path / "sweep" / "0"
    (job / "plots").mkdir(parents=True)
    Image.new("RGB", (24, 24), "green").save(job / "plots" / "tsne_species.png")
    (job / "per_class.csv").write_text(
        "class,name,images,top1\nCorvus corax,corvus corax,3,0.6667\nPica pica,pica pica,2,\n"
    )
    (job / "results.json").write_text(json.dumps(SUITE_RESULT))
    settings = {"enabled": True, "offline": True, "project": "tolclip", "name": None, "group": "suite-x"}
    assert log_suite_result(settings, SUITE_RESULT, job, "eval_suite")
    run, keys, files = offline_run(job)
    assert (run.display_name, run.run_group, run.job_type) == ("eval_suite", "suite-x", "eval-suite")
    assert {"zero_shot/top1", "few_shot/1_shot/mean", "intrinsic/silhouette/species"} <= keys
    assert "few_shot/1_shot/folds" not in keys and "intrinsic/silhouette/kingdom" not in keys  # numbers only
    (table,) = files.glob("media/table/zero_shot/per_class_*.table.json")
    assert json.loads(table.read_text())["data"] == [
        ["Corvus corax", "corvus corax", 3, 0.6667],
        ["Pica pica", "pica pica", 2, None],
    ]
    assert list(files.glob("media/images/intrinsic/maps_*.png"))
    assert list(files.glob("media/images/intrinsic/silhouette_by_rank_*.png"))
    # The report's table joins the jobs' group, whatever the group was called.
    write_suite(tmp_path / "sweep", use_wandb=True)
    report, keys, _ = offline_run(tmp_path / "sweep")
    assert report.run_group == "suite-x" and report.job_type == "eval-suite" and "eval_suite/_type" in keys
    # Off (the config's default): nothing is written.
    assert not log_suite_result({"enabled": False}, SUITE_RESULT, tmp_path / "off", "eval_suite")
    assert not (tmp_path / "off").exists()


# ------------------------------------------------------------------------------ eval, build-shards


def test_eval_logs_its_zero_shot_table_when_enabled(
    small_shards: Path, tmp_path: Path, wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tolclip.cli.eval import evaluate

    train(make_cfg(tmp_path / "train", [*shard_overrides(small_shards), "trainer.max_steps=1"]))
    ckpt = tmp_path / "train" / "run" / "checkpoints" / "last.ckpt"
    data = [o for o in shard_overrides(small_shards) if o.startswith(("data", "+data", "model"))]
    overrides = [*data, f"ckpt_path={ckpt}", "zero_shot.text_types=[taxon]", "zero_shot.templates=single"]
    cfg = make_cfg(tmp_path / "eval", [*overrides, "wandb.enabled=true"], config_name="eval")
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # named by the task, as a plain script would be
    results = evaluate(cfg)
    run, keys, files = offline_run(tmp_path / "eval" / "run")
    assert (run.display_name, run.job_type, run.run_group) == ("eval", "eval", "")
    assert "zeroshot/taxon/val/species/top1" in keys
    (table,) = files.glob("media/table/zeroshot/table_*.table.json")
    assert len(json.loads(table.read_text())["data"]) == len(results) == 7


def test_build_shards_logs_its_counts_when_enabled(tmp_path: Path, wandb_env: Path, capsys) -> None:
    from helpers import colour_image, run_cli

    root = tmp_path / "src"
    for i, label in enumerate(["corvus", "pica"]):
        (root / label).mkdir(parents=True)
        for n in range(2):
            colour_image(10 * i + n, size=40).save(root / label / f"{n}.png")
    (root / "names.csv").write_text("label,scientific_name\ncorvus,Corvus corax\npica,Pica pica\n")
    source = f"[{{kind: image_folder, source: t, root: '{root}', names_table: '{root / 'names.csv'}'}}]"
    code, out, err = run_cli(
        capsys,
        "build-shards",
        f"build.out_dir={tmp_path / 'out'}",
        f"build.sources={source}",
        "build.progress=false",
        "build.workers=1",
        "build.train_small_fraction=0",
        f"hydra.run.dir={tmp_path / 'run'}",
        "wandb.enabled=true",
    )
    assert code == 0, err[-2000:]
    run, keys, _ = offline_run(tmp_path / "run")
    assert run.job_type == "build-shards" and {"inputs", "images", "skipped", "excluded"} <= keys


def test_supervised_baseline_logs_its_table_and_species_captions(
    small_shards: Path, tmp_path: Path, wandb_env: Path
) -> None:
    # The baseline's own model (its micro net) and callbacks (no zero-shot).
    skip = ("logger=csv", "callbacks.zero_shot.templates=single", "model=micro")
    overrides = [o for o in shard_overrides(small_shards) if o not in skip]
    extra = ["model/net=micro", "logger=wandb", "trainer.max_steps=2", "trainer.log_every_n_steps=1"]
    cfg = make_cfg(tmp_path, ["experiment=supervised", *overrides, *extra])
    train(cfg)
    _, keys, files = offline_run(tmp_path / "run")
    assert {"classifier/table/_type", "train/samples/_type", "throughput/samples_per_s"} <= keys
    (table,) = files.glob("media/table/classifier/table_*.table.json")
    assert {row[1] for row in json.loads(table.read_text())["data"]} == {"classifier"}
