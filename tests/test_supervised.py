"""The supervised baseline: species vocabulary, training, checkpoint round trip, experiment config."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tolclip.core.resources import config_dir
from tolclip.core.taxonomy import Taxon
from tolclip.data.images import encode_jpeg
from tolclip.data.shards import Sample, scan_species, write_shards
from tolclip.models.checkpoints import load_classifier
from tolclip.models.config import net_config
from tolclip.models.towers import CLIP
from tolclip.training.callbacks import SkippedSamples, SpeciesEvaluation
from tolclip.training.clip_module import CLIPLitModule
from tolclip.training.run import train
from tolclip.training.supervised import SupervisedLitModule

from helpers import TAXA, make_cfg

CONFIG_DIR = str(config_dir())

# A supervised model small enough that a few steps take about a second: the micro towers.
MICRO = ["model/net=micro", "model.scheduler.warmup_steps=2"]
NO_SPECIES = Taxon.clean(kingdom="Animalia", phylum="Chordata", **{"class": "Aves"}, genus="Corvus")
UNSEEN = Taxon.clean(
    kingdom="Animalia",
    phylum="Chordata",
    **{"class": "Aves"},
    order="Passeriformes",
    family="Corvidae",
    genus="Corvus",
    species="monedula",
)
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]  # one per TAXA entry
TRAIN_PER_SPECIES, VAL_PER_SPECIES, UNLABELLED = 10, 3, 8


def toy_image(colour: tuple[int, int, int], seed: int) -> bytes:
    """A noisy square of the species' colour: separable by colour alone."""
    noise = np.random.default_rng(seed).integers(-25, 25, (32, 32, 3))
    return encode_jpeg(Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)))


def toy_samples(
    split: str, per_species: int, extra: list[tuple[Taxon, tuple[int, int, int]]]
) -> list[Sample]:
    items = [(t, c) for _ in range(per_species) for t, c in zip(TAXA, COLOURS, strict=True)] + extra
    offset = {"t": 0, "v": 10_000}[split]  # distinct noise per split, the same in every run
    return [
        Sample(key=f"{split}{i:04d}", image=toy_image(c, offset + i), taxon=t)
        for i, (t, c) in enumerate(items)
    ]


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory) -> Path:
    """Four colour-coded species, some samples without species; val adds an unseen Corvus."""
    root = tmp_path_factory.mktemp("toy")
    write_shards(
        toy_samples("t", TRAIN_PER_SPECIES, [(NO_SPECIES, (128, 128, 128))] * UNLABELLED),
        root / "train",
        max_count=12,
    )
    write_shards(toy_samples("v", VAL_PER_SPECIES, [(UNSEEN, COLOURS[0])] * 2), root / "val")
    return root


def toy_overrides(root: Path) -> list[str]:
    # A finite stream over 48 samples in batches of 8: every sample once per epoch, 6 steps each.
    return [
        "experiment=supervised",
        "data=shards",
        f"data.train_shards={root}/train/shard-*.tar",
        f"+data.eval_sets.val={root}/val/shard-*.tar",
        "data.resampled=false",
        "data.epoch_samples=null",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.shuffle_buffer=8",
        "logger=csv",
        "~callbacks.progress_bar",
        "trainer.log_every_n_steps=1",
        *MICRO,
    ]


@pytest.fixture(scope="module")
def trained(toy_shards, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("run")
    epochs = 6
    cfg = make_cfg(
        tmp, [*toy_overrides(toy_shards), f"trainer.max_epochs={epochs}", f"trainer.max_steps={6 * epochs}"]
    )
    out = train(cfg)
    out["epochs"], out["run_dir"] = epochs, tmp / "run"
    return out


def test_vocabulary_is_full_lineages_sorted_and_independent_of_shard_layout(toy_shards, tmp_path):
    classes = scan_species(sorted(str(p) for p in (toy_shards / "train").glob("*.tar")))
    assert classes == sorted(t.ranks for t in TAXA)
    assert all(len(c) == 7 and c[-1] for c in classes)  # the sample without species adds no class
    # The same samples in another order and other shard sizes give the same classes.
    write_shards(reversed(toy_samples("t", TRAIN_PER_SPECIES, [])), tmp_path, max_count=7)
    assert scan_species(sorted(str(p) for p in tmp_path.glob("*.tar"))) == classes
    with pytest.raises(ValueError, match="not a local file"):
        scan_species(["pipe:cat shard.tar"])


def test_training_learns_the_toy_species_and_counts_samples_without_species(trained):
    model, trainer = trained["model"], trained["trainer"]
    assert trainer.global_step == 6 * trained["epochs"]
    assert model.unlabelled_total == UNLABELLED * trained["epochs"]  # every sample seen once per epoch
    assert trained["metrics"]["train/unlabelled_samples"] == model.unlabelled_total
    assert next(c for c in trainer.callbacks if isinstance(c, SkippedSamples)).total == 0

    rows = list(csv.DictReader(next((trained["run_dir"] / "csv").rglob("metrics.csv")).open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == trainer.global_step
    assert np.mean(losses[-6:]) < 0.5 * np.mean(losses[:6])

    callback = next(c for c in trainer.callbacks if isinstance(c, SpeciesEvaluation))
    results = {r.rank: r for r in callback.results}
    species, genus = results["species"], results["genus"]
    assert species.classes == len(TAXA) and species.images == VAL_PER_SPECIES * len(TAXA)
    assert species.top1 >= 2 * species.chance, species
    # The unseen Corvus has no species class but its genus was trained on: it counts from genus up.
    assert genus.images == species.images + 2
    assert (trained["run_dir"] / "classifier.csv").read_text().startswith("text_type,eval_set,rank")


def test_checkpoint_carries_the_classes_and_loads_back_with_the_same_features(trained, toy_shards):
    ckpt = trained["run_dir"] / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    expected = scan_species(sorted(str(p) for p in (toy_shards / "train").glob("*.tar")))
    assert [tuple(c) for c in saved["hyper_parameters"]["species_classes"]] == expected

    module, classes = load_classifier(ckpt)
    assert classes == expected == trained["model"].species_classes
    assert not module.training
    images = torch.randn(3, 3, 32, 32)
    trained_model = trained["model"].eval()
    with torch.no_grad():
        feats = module.encode_image(images)
        torch.testing.assert_close(feats, trained_model.encode_image(images))
        torch.testing.assert_close(module(images), trained_model(images))
        assert feats.shape == (3, 32)
        torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))
        raw = module.encode_image(images, normalize=False)
    # Pre-classifier features: the head applied to them gives the logits.
    torch.testing.assert_close(module.head(raw), module(images))


def test_resume_continues_the_run_and_its_counts(trained, toy_shards, tmp_path):
    ckpt = trained["run_dir"] / "checkpoints" / "last.ckpt"
    epochs = trained["epochs"] + 1
    out = train(
        make_cfg(
            tmp_path,
            [
                *toy_overrides(toy_shards),
                f"trainer.max_epochs={epochs}",
                f"trainer.max_steps={6 * epochs}",
                f"ckpt_path={ckpt}",
            ],
        )
    )
    assert out["trainer"].global_step == 6 * epochs
    assert out["model"].unlabelled_total == UNLABELLED * epochs


def test_resume_on_other_species_is_a_clear_error(trained):
    ckpt = torch.load(trained["run_dir"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    other = SupervisedLitModule(
        **{**ckpt["hyper_parameters"], "species_classes": [t.ranks for t in TAXA[:2]]}
    )
    with pytest.raises(ValueError, match="differ"):
        other.on_load_checkpoint(ckpt)


def test_non_supervised_checkpoints_are_a_clear_error(tmp_path):
    net = net_config("tiny")
    net["vision"] |= {"width": 16, "layers": 1, "heads": 1}
    net["text"] |= {"width": 16, "layers": 1, "heads": 1}
    clip = CLIPLitModule(net=CLIP(**net), optimizer={"lr": 1e-3}, scheduler={})
    # What Lightning writes for a CLIP run: state dict plus the module's hyperparameters.
    torch.save(
        {"state_dict": clip.state_dict(), "hyper_parameters": dict(clip.hparams)}, tmp_path / "clip.ckpt"
    )
    with pytest.raises(ValueError, match="not a supervised tolclip checkpoint"):
        load_classifier(tmp_path / "clip.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_classifier(tmp_path / "junk.ckpt")
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(
    ("supervised", "clip"), [("supervised_tiny", "tiny"), ("supervised_vit_b16", "vit_b16")]
)
def test_model_configs_mirror_the_clip_towers_and_optimiser(supervised, clip):
    sup = make_cfg(Path("/nonexistent"), [f"model={supervised}"]).model
    ref = make_cfg(Path("/nonexistent"), [f"model={clip}"]).model
    assert sup.net.embed_dim == ref.net.embed_dim and sup.net.vision == ref.net.vision
    assert sup.optimizer == ref.optimizer and sup.scheduler == ref.scheduler
    cfg = make_cfg(Path("/nonexistent"), ["experiment=supervised", f"model={supervised}"])
    assert cfg.model.net.vision.width == ref.net.vision.width  # the command line's model wins
    assert cfg.callbacks.get("zero_shot") is None and cfg.callbacks.species_eval is not None


def test_experiment_trains_on_the_embedded_synthetic_data(tmp_path):
    """`experiment=supervised` as shipped (synthetic data, seen/unseen eval sets), a few steps."""
    cfg = make_cfg(
        tmp_path,
        [
            "experiment=supervised",
            "logger=csv",
            "~callbacks.progress_bar",
            *MICRO,
            f"data.generate.out_dir={tmp_path}/synthetic",
            "+data.generate.train_per_species=1",
            "+data.generate.val_per_species=1",
            "+data.generate.unseen_per_species=1",
            "trainer.max_steps=2",
            "data.batch_size=16",
            "data.epoch_samples=32",
        ],
    )
    out = train(cfg)
    assert out["trainer"].global_step == 2 and math.isfinite(out["metrics"]["train/loss"])
    results = next(c for c in out["trainer"].callbacks if isinstance(c, SpeciesEvaluation)).results
    sets = {(r.eval_set, r.rank) for r in results}
    assert ("seen", "species") in sets and ("unseen", "genus") in sets
    assert ("unseen", "species") not in sets  # unseen species are not among the classes
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_the_benchmark_suite_evaluates_the_supervised_baseline(trained, tmp_path):
    """`suite/model=supervised`: image features only, so few-shot and linear probe but no zero-shot."""
    from tolclip.evaluation.features import FeatureCache
    from tolclip.evaluation.suite import evaluate, load_eval_model
    from tolclip.evaluation.tasks import Task

    model = load_eval_model(
        {"kind": "supervised", "path": str(trained["run_dir"] / "checkpoints" / "last.ckpt")}
    )
    assert not model.has_text and model.preprocess.image_size == 32
    paths, labels = [], []
    for i in range(24):  # the toy species' colours, 6 images each
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(toy_image(COLOURS[i % 4], 50_000 + i))
        paths.append(str(path))
        labels.append(i % 4)
    task = Task("toy", "asis", paths, labels, list(TAXA), [t.scientific_name for t in TAXA])
    cfg = {"few_shot": {"ks": [1, 5], "folds": 3}, "intrinsic": {"enabled": False}}
    result = evaluate(model, task, cfg, FeatureCache(None), tmp_path / "out")
    assert "zero_shot" not in result and result["features"] == 24
    # The classifier separates the colours, so its pre-head features do too.
    assert result["few_shot"]["5_shot"]["mean"] > 0.5 and len(result["few_shot"]["1_shot"]["folds"]) == 3
    assert (tmp_path / "out" / "results.json").exists()
