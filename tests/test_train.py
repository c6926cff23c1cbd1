"""Hydra configs run end to end: train, evaluate, resume."""

import pytest
import torch

from tolclip.cli.eval import evaluate
from tolclip.data.images import encode_jpeg
from tolclip.training.callbacks import SkippedSamples
from tolclip.training.run import train

from helpers import MICRO, add_raw_member, colour_image, make_cfg, shard_overrides


@pytest.mark.parametrize("text_type", ["mixed", "taxon_com"])
def test_train_on_shards_evaluates_and_logs(small_shards, tmp_path, text_type):
    cfg = make_cfg(
        tmp_path, [*shard_overrides(small_shards), "trainer.max_epochs=2", f"data.text_type={text_type}"]
    )
    out = train(cfg)
    assert out["trainer"].global_step == 4
    assert torch.isfinite(torch.tensor(out["metrics"]["train/loss"]))
    ranks = {r.rank for r in out["zero_shot"] if r.eval_set == "val"}
    assert ranks == {"kingdom", "phylum", "class", "order", "family", "genus", "species"}
    csv_text = (tmp_path / "run" / "zero_shot.csv").read_text()
    assert (
        csv_text.startswith("train_text_type,text_type,eval_set,rank")
        and f"{text_type},taxon,val" in csv_text
    )
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert list((tmp_path / "run" / "csv").rglob("metrics.csv"))


def test_eval_entry_point_reproduces_end_of_training_results(small_shards, tmp_path):
    out = train(make_cfg(tmp_path / "train", [*shard_overrides(small_shards), "trainer.max_epochs=2"]))
    at_end = {(r.eval_set, r.rank): r.top1 for r in out["zero_shot"] if r.text_type == "taxon"}
    ckpt = tmp_path / "train" / "run" / "checkpoints" / "last.ckpt"
    data = [o for o in shard_overrides(small_shards) if o.startswith(("data", "+data"))]
    cfg = make_cfg(
        tmp_path / "eval",
        [*data, *MICRO, f"ckpt_path={ckpt}", "zero_shot.text_types=[taxon]", "zero_shot.templates=single"],
        config_name="eval",
    )
    results = evaluate(cfg)
    assert {(r.eval_set, r.rank): r.top1 for r in results} == at_end  # last.ckpt holds the final weights
    assert (tmp_path / "eval" / "run" / "zero_shot.csv").read_text().startswith("checkpoint,text_type")


def test_eval_with_wrong_architecture_is_a_clear_error(small_shards, tmp_path):
    train(make_cfg(tmp_path / "train", [*shard_overrides(small_shards), "trainer.max_epochs=1"]))
    ckpt = tmp_path / "train" / "run" / "checkpoints" / "last.ckpt"
    cfg = make_cfg(
        tmp_path / "eval", [f"ckpt_path={ckpt}", *MICRO, "model.net.embed_dim=24"], config_name="eval"
    )
    with pytest.raises(ValueError, match="does not match the model config"):
        evaluate(cfg)


def test_precision_clipping_accumulation_checkpointing_and_step_eval(small_shards, tmp_path):
    cfg = make_cfg(
        tmp_path,
        [
            *shard_overrides(small_shards),
            "trainer.max_epochs=2",
            "trainer.precision=bf16-mixed",
            "model.grad_clip=1.0",
            "model.accum_freq=2",  # the feature cache (manual optimisation) under bf16 and checkpointing
            "model.grad_checkpointing=true",
            "callbacks.zero_shot.every_n_steps=1",
            "trainer.log_every_n_steps=1",
        ],
    )
    out = train(cfg)
    assert out["trainer"].global_step == 2  # 4 batches, 2 per optimiser step
    assert out["model"].net.text.transformer.is_gradient_checkpointing
    assert torch.isfinite(torch.tensor(out["metrics"]["train/loss"]))
    metrics = next((tmp_path / "run" / "csv").rglob("metrics.csv")).read_text()
    assert "val_zeroshot/taxon/val/genus/top1" in metrics  # evaluated during training, fast templates
    assert "zeroshot/taxon/val/species/top1" in metrics  # and at the end


def _opt_state(trainer):
    state = trainer.optimizers[0].state_dict()["state"]
    return {k: {n: v.clone() for n, v in s.items() if torch.is_tensor(v)} for k, s in state.items()}


def test_resume_continues_with_same_step_and_optimizer_state(small_shards, tmp_path):
    common = [*shard_overrides(small_shards), "data.num_workers=1"]
    full = train(make_cfg(tmp_path / "full", [*common, "trainer.max_epochs=3"]))
    # Same config, stopped after the first epoch as if the job had been killed there.
    first = train(
        make_cfg(
            tmp_path / "part",
            [
                *common,
                "trainer.max_epochs=3",
                "+callbacks.stop._target_=helpers.StopAfterSteps",
                "+callbacks.stop.steps=2",
            ],
        )
    )
    assert first["trainer"].global_step == 2
    ckpt = tmp_path / "part" / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2

    resumed = train(make_cfg(tmp_path / "resume", [*common, "trainer.max_epochs=3", f"ckpt_path={ckpt}"]))
    assert resumed["trainer"].global_step == full["trainer"].global_step == 6
    # Same data, augmentation and text-type draws per epoch: the resumed run ends where the
    # uninterrupted one does, optimizer moments and scheduler included.
    a, b = _opt_state(full["trainer"]), _opt_state(resumed["trainer"])
    assert a.keys() == b.keys()
    for k in a:
        for n in a[k]:
            torch.testing.assert_close(a[k][n], b[k][n], rtol=1e-5, atol=1e-7)
    assert full["trainer"].lr_scheduler_configs[0].scheduler.last_epoch == 6
    assert resumed["trainer"].lr_scheduler_configs[0].scheduler.last_epoch == 6
    for (n, p), (_, q) in zip(
        full["model"].net.named_parameters(), resumed["model"].net.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_training_survives_corrupt_samples_and_counts_them(small_shards, tmp_path):
    good = encode_jpeg(colour_image(99))
    for shard in sorted((small_shards / "train").glob("*.tar")):
        add_raw_member(shard, f"trunc{shard.stem[-1]}.jpg", good[: len(good) // 3])
        add_raw_member(shard, f"trunc{shard.stem[-1]}.sci.txt", b"a photo of Corvus corax.")
        add_raw_member(shard, f"nocap{shard.stem[-1]}.jpg", good)  # no captions, no taxon.json
    # A finite stream reads every shard exactly once: 4 shards x 2 bad samples.
    cfg = make_cfg(
        tmp_path,
        [
            *shard_overrides(small_shards),
            "data.resampled=false",
            "data.epoch_samples=null",
            "trainer.max_steps=5",
            "trainer.max_epochs=1",
        ],
    )
    out = train(cfg)
    assert out["trainer"].global_step == 5  # 40 good samples / batch 8
    assert next(c for c in out["trainer"].callbacks if isinstance(c, SkippedSamples)).total == 8
    assert out["metrics"]["train/skipped_samples"] == 8


def test_finite_stream_without_max_steps_is_a_clear_error(small_shards, tmp_path):
    cfg = make_cfg(
        tmp_path, [*shard_overrides(small_shards), "data.resampled=false", "data.epoch_samples=null"]
    )
    with pytest.raises(ValueError, match="set trainer.max_steps"):
        train(cfg)


def test_missing_checkpoint_is_a_clear_error(small_shards, tmp_path):
    cfg = make_cfg(tmp_path, [*shard_overrides(small_shards), "ckpt_path=/nonexistent/last.ckpt"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(cfg)


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("text_type", ["taxon", "mixed"])
def test_default_experiment_learns_the_tree(tmp_path, text_type):
    """The embedded default, shortened: seen species well above chance, unseen genera above chance."""
    cfg = make_cfg(
        tmp_path,
        [
            "logger=csv",
            "~callbacks.progress_bar",
            "callbacks.zero_shot.templates=single",
            f"data.text_type={text_type}",
            f"data.generate.out_dir={tmp_path}/synthetic",
            "+data.generate.train_per_species=16",
            "+data.generate.val_per_species=4",
            "+data.generate.unseen_per_species=4",
            "trainer.max_epochs=5",
        ],
    )
    results = {(r.eval_set, r.rank): r for r in train(cfg)["zero_shot"] if r.text_type == "taxon"}
    species, genus = results[("seen", "species")], results[("unseen", "genus")]
    assert species.top1 >= 5 * species.chance, species
    assert genus.top1 >= 3 * genus.chance, genus


@pytest.mark.parametrize("debug", ["fdr", "limit", "overfit", "profiler"])
def test_debug_configs_run(small_shards, tmp_path, debug):
    # overfit's 20 epochs shortened to 2: the test checks the wiring, not the convergence.
    short = ["trainer.max_epochs=2"] if debug == "overfit" else []
    cfg = make_cfg(tmp_path, [*shard_overrides(small_shards), f"debug={debug}", *short])
    assert cfg.logger is None and cfg.trainer.detect_anomaly and cfg.task_name == "debug"
    out = train(cfg)
    assert torch.isfinite(torch.tensor(out["metrics"]["train/loss"]))
    steps = {"fdr": 1, "limit": 3 * 2, "overfit": 2 * 3, "profiler": 2}[debug]
    assert out["trainer"].global_step == steps


def test_tensorboard_logger_writes_event_files(small_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = [o for o in shard_overrides(small_shards) if o != "logger=csv"]
    cfg = make_cfg(tmp_path, [*overrides, "logger=tensorboard", "trainer.max_epochs=1"])
    train(cfg)
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in the run folder"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "zeroshot/taxon/val/species/top1" in acc.Tags()["scalars"]  # the end-of-training table


def test_mps_trainer_config(tmp_path):
    cfg = make_cfg(tmp_path, ["trainer=mps"])
    assert cfg.trainer.accelerator == "mps" and cfg.trainer.devices == 1
    assert cfg.trainer.precision == "32-true" and cfg.trainer.max_epochs == 14  # the rest from trainer/cpu
    if not torch.backends.mps.is_available():
        pytest.skip("composed only: this machine has no Apple GPU (MPS) to train on")
