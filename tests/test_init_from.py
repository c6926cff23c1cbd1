"""Training from released weights (`model.init_from`): open_clip folders, bare state dicts and our own
checkpoints load before step 0, the architecture comes from the weights or must match them, positional
embeddings are resized, the source is recorded, and the result exports back to open_clip.

open_clip is the reference: the released models are written by open_clip itself with random weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import hydra
import open_clip
import pytest
import safetensors.torch
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf, open_dict

from tolclip.core.tokenizer import get_tokenizer
from tolclip.data.shards import write_shards
from tolclip.models.export import export_open_clip
from tolclip.models.open_clip_config import open_clip_kwargs
from tolclip.models.pretrained import load_into, resize_pos_embed
from tolclip.models.towers import CLIP
from tolclip.training.init_from import INIT_FILE, apply_init_from
from tolclip.training.run import train

from helpers import make_cfg, make_samples, shard_overrides

pytestmark = pytest.mark.usefixtures("single_thread")

# A released model at micro size; its context length (16) differs from the configs' 77, so the data
# configs visibly follow the loaded net. Two layers per tower; widths of 64 (heads = width / 64 in a bare
# state dict).
RELEASED = {
    "embed_dim": 32,
    "vision": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 1, "act": "quick_gelu"},
    "text": {"context_length": 16, "width": 64, "layers": 2, "heads": 1, "act": "quick_gelu"},
}
CAPTIONS = ["a photo of Corvus corax, common raven.", "Plantae Tracheophyta Rosa canina", "fly agaric"]


@torch.no_grad()
def released_model(cfg: dict = RELEASED, seed: int = 0) -> open_clip.model.CLIP:
    """open_clip's CLIP with random weights, biases and LayerNorms included, and a trained-like temperature."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**open_clip_kwargs(cfg))
    for name, p in model.named_parameters():
        if p.ndim == 1 and name != "logit_scale":
            p.add_(torch.randn(p.shape) * 0.1)
    model.logit_scale.fill_(math.log(30.0))
    return model.eval()


def write_release(folder: Path, model: open_clip.model.CLIP, cfg: dict = RELEASED) -> Path:
    """A release folder as BioCLIP publishes one (and scripts/make_random_openclip.py writes)."""
    folder.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "attn_mask"}
    safetensors.torch.save_file(state, folder / "open_clip_model.safetensors")
    config = {"model_cfg": open_clip_kwargs(cfg), "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


def inputs(image_size: int = 32, context_length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    return images, get_tokenizer(context_length)(CAPTIONS)


@torch.no_grad()
def embeddings(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised embeddings (eval mode), from open_clip's CLIP or ours: the calls are the same."""
    was = model.training
    model.eval()
    out = {
        "image": model.encode_image(images, normalize=True),
        "text": model.encode_text(tokens, normalize=True),
    }
    model.train(was)
    return out


def assert_same(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    diffs = {k: (ours[k] - ref[k]).abs().max().item() for k in ref}
    assert max(diffs.values()) <= atol, diffs
    for kind in ("image", "text"):  # the inputs are told apart: equality means something
        assert (ref[kind][1:] - ref[kind][:1]).abs().max() > 1e-3, kind


class Probe(Callback):
    """What the net does before its first step, and the loss on the first batch before and after training."""

    def __init__(self) -> None:
        self.first: dict[str, torch.Tensor] = {}
        self.batch: dict[str, Any] | None = None
        self.losses: list[float] = []

    @torch.no_grad()
    def _loss(self, module: Any) -> float:
        tokens, _ = module.select_text(self.batch["text"], 0)
        return float(module.loss_fn(*module.net(self.batch["image"], tokens)))

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.first = embeddings(module.net, *inputs())

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if self.batch is None:
            self.batch = batch
            self.losses.append(self._loss(module))

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self.losses.append(self._loss(module))


def probe(out: dict) -> Probe:
    return next(c for c in out["trainer"].callbacks if isinstance(c, Probe))


FROM_WEIGHTS = ["model/net=from_weights", "logger=csv", "trainer.max_epochs=4", "model.optimizer.lr=3e-3"]


@pytest.fixture(scope="module")
def continued(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One training run from a release folder, as `tolclip train model/net=from_weights model.init_from=...`."""
    root = tmp_path_factory.mktemp("continued")
    write_shards(make_samples(40), root / "train", max_count=10)
    write_shards(make_samples(12, prefix="v"), root / "val", max_count=100)
    reference = released_model()
    folder = write_release(root / "release", reference)
    overrides = [*shard_overrides(root), *FROM_WEIGHTS, f"model.init_from={folder}"]
    overrides += [f"+callbacks.probe._target_={__name__}.Probe"]
    cfg = make_cfg(root / "a", overrides)
    # Hydra writes the composed config (sizes still null) into the run folder before the run starts.
    saved = cfg.copy()
    with open_dict(saved):
        del saved["hydra"]
    (root / "a" / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save(saved, root / "a" / "run" / ".hydra" / "config.yaml")
    out = train(cfg)
    return {"root": root, "folder": folder, "reference": reference, "cfg": cfg, "out": out}


def test_continued_pretraining_starts_at_the_weights_learns_and_exports(
    continued: dict[str, Any], tmp_path: Path
) -> None:
    cfg, out, reference = continued["cfg"], continued["out"], continued["reference"]
    # The architecture came from the weights, and the data follow it.
    assert OmegaConf.to_container(cfg.model.net.vision) == {**RELEASED["vision"], "mlp_ratio": 4.0}
    assert cfg.model.net.text.context_length == cfg.data.context_length == 16
    assert cfg.data.image_size == 32
    # Before the first step, tolclip's embeddings are open_clip's for the same inputs.
    found = probe(out)
    assert_same(found.first, embeddings(reference, *inputs()))
    # Training moved the weights and lowered the loss on the first batch.
    assert out["trainer"].global_step == 8
    before, after = found.losses
    print(f"loss on the first batch: {before:.4f} before, {after:.4f} after 8 steps")
    assert after < before - 0.05
    net = out["model"].net
    # The result exports as an open_clip folder that open_clip loads and that computes what ours does.
    exported = export_open_clip(net, tmp_path / "export")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{exported}")
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert_same(embeddings(model, *inputs()), embeddings(net, *inputs()))
    assert (embeddings(net, *inputs())["image"] - found.first["image"]).abs().max() > 1e-3  # it did train


def test_source_path_and_sha256_are_recorded(continued: dict[str, Any]) -> None:
    cfg, folder, run = continued["cfg"], continued["folder"], continued["root"] / "a" / "run"
    sha = hashlib.sha256((folder / "open_clip_model.safetensors").read_bytes()).hexdigest()
    assert cfg.model.init_from == str(folder.absolute()) and cfg.model.init_sha256 == sha
    record = json.loads((run / INIT_FILE).read_text())
    assert record["sha256"] == sha and record["path"] == str(folder) and record["kind"] == "open_clip_folder"
    assert record["net"]["vision"]["width"] == 64 and record["trained_image_size"] == 32
    # the checkpoint's hparams and the logger's hyperparameters carry them
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["init_sha256"] == sha
    assert ckpt["hyper_parameters"]["init_from"] == str(folder)
    logged = yaml.safe_load(next((run / "csv").rglob("hparams.yaml")).read_text())
    assert logged["model"]["init_sha256"] == sha and logged["model"]["init_from"] == str(folder)
    # the run folder's saved config now has the sizes, so the run's checkpoints rebuild without the weights
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.model.net.vision.width == 64 and saved.model.init_sha256 == sha


def test_a_tolclip_checkpoint_is_a_source(continued: dict[str, Any], tmp_path: Path) -> None:
    root = continued["root"]
    ckpt = root / "a" / "run" / "checkpoints" / "last.ckpt"
    cfg = make_cfg(tmp_path, [*shard_overrides(root), *FROM_WEIGHTS, f"model.init_from={ckpt}"])
    source = apply_init_from(cfg)  # the architecture from the checkpoint's run folder
    assert source is not None and source.kind == "tolclip_checkpoint"
    assert cfg.model.net.text.context_length == cfg.data.context_length == 16
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    trained = continued["out"]["model"].net.state_dict()
    for name, value in module.net.state_dict().items():
        assert torch.equal(value, trained[name]), name


# --------------------------------------------------------------------------------------------------
# Architecture: from the weights, or matching them


def test_a_differing_size_is_one_error_naming_each(tmp_path: Path) -> None:
    folder = write_release(tmp_path / "release", released_model())
    cfg = make_cfg(tmp_path, ["model=micro", f"model.init_from={folder}", "model.net.text.context_length=16"])
    with pytest.raises(ValueError) as err:
        apply_init_from(cfg)
    message = str(err.value)
    print(message)
    assert f"model.init_from={folder}" in message
    assert "model.net.vision.width: 64 in the weights, 32 in the config" in message
    assert "model.net.text.width: 64 in the weights, 32 in the config" in message
    assert "model.net.vision.layers: 2 in the weights, 1 in the config" in message
    assert "model.net.vision.act: quick_gelu in the weights, gelu in the config" in message
    assert "model.net.embed_dim" not in message and "image_size" not in message  # those agree / may differ


def test_given_sizes_that_agree_are_kept_and_nulls_filled(tmp_path: Path) -> None:
    folder = write_release(tmp_path / "release", released_model())
    overrides = ["model=micro", "model/net=from_weights", f"model.init_from={folder}"]
    cfg = make_cfg(tmp_path, [*overrides, "model.net.vision.width=64", "model.net.text.heads=1"])
    apply_init_from(cfg)
    assert cfg.model.net.vision.width == 64 and cfg.model.net.embed_dim == 32
    assert cfg.model.net.text.vocab_size == 49408 and cfg.model.net.vision.act == "quick_gelu"


def test_null_sizes_without_weights_are_an_error(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, ["model=micro", "model/net=from_weights"])
    with pytest.raises(
        ValueError, match=r"model.net.embed_dim, .* null: .* model.init_from, which is not set"
    ):
        apply_init_from(cfg)


def test_another_image_size_resizes_the_positions_as_open_clip(tmp_path: Path) -> None:
    reference = released_model()
    folder = write_release(tmp_path / "release", reference)
    cfg = make_cfg(
        tmp_path,
        [
            "model=micro",
            "model/net=from_weights",
            f"model.init_from={folder}",
            "model.net.vision.image_size=48",
        ],
    )
    apply_init_from(cfg)
    assert cfg.data.image_size == 48 and cfg.model.net.vision.width == 64
    net = hydra.utils.instantiate(cfg.model, _convert_="all").net
    # open_clip at 48 px, its state dict resized by open_clip's own resize_pos_embed
    bigger = open_clip.model.CLIP(
        **open_clip_kwargs({**RELEASED, "vision": {**RELEASED["vision"], "image_size": 48}})
    )
    state = reference.state_dict()
    open_clip.model.resize_pos_embed(state, bigger)
    assert state["visual.positional_embedding"].shape == (1 + 6 * 6, 64)
    torch.testing.assert_close(
        net.visual.trunk.pos_embed[0], state["visual.positional_embedding"], rtol=0, atol=1e-6
    )
    bigger.load_state_dict(state)
    assert_same(embeddings(net, *inputs(48)), embeddings(bigger.eval(), *inputs(48)))
    # the class token's position is kept, and the grid back at 32 px is the original one
    assert torch.equal(net.visual.trunk.pos_embed[0, 0], reference.visual.positional_embedding[0])
    same = resize_pos_embed(reference.visual.positional_embedding[None], 4)
    assert torch.equal(same[0], reference.visual.positional_embedding)


# --------------------------------------------------------------------------------------------------
# Bare state dicts


def test_bare_state_dict_needs_the_activation_choice(tmp_path: Path) -> None:
    reference = released_model()
    path = tmp_path / "openai.pt"
    torch.save(reference.state_dict(), path)
    overrides = ["model=micro", "model/net=from_weights", f"model.init_from={path}"]
    with pytest.raises(ValueError, match=r"model.init_quick_gelu.*|quick_gelu=True for OpenAI") as err:
        apply_init_from(make_cfg(tmp_path, overrides))
    assert "model.init_quick_gelu" in str(err.value) and str(path) in str(err.value)
    cfg = make_cfg(tmp_path, [*overrides, "model.init_quick_gelu=true"])
    source = apply_init_from(cfg)
    assert source is not None and source.kind == "open_clip_state_dict"
    assert cfg.model.net.vision.heads == 1 and cfg.model.net.text.act == "quick_gelu"
    net = hydra.utils.instantiate(cfg.model, _convert_="all").net
    assert_same(embeddings(net, *inputs()), embeddings(reference, *inputs()))


def test_load_into_checks_the_net_built_elsewhere(tmp_path: Path) -> None:
    folder = write_release(tmp_path / "release", released_model())
    other = CLIP(**{**RELEASED, "embed_dim": 48})
    with pytest.raises(ValueError, match="net.embed_dim: 32 in the weights, 48 in the net"):
        load_into(other, folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_into(other, tmp_path / "nowhere")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a weights source"):
        load_into(other, tmp_path / "weights.npz")


# --------------------------------------------------------------------------------------------------
# The paper's recipe


def test_bioclip_experiment_composes_the_papers_recipe(tmp_path: Path) -> None:
    data = ["data.train_shards=x.tar", "data.epoch_samples=10"]
    cfg = make_cfg(tmp_path, ["experiment=bioclip", "model.init_from=/models/openai-vit-b-16", *data])
    net = OmegaConf.to_container(cfg.model.net)
    assert net["vision"] == {
        "image_size": 224,
        "patch_size": 16,
        "width": 768,
        "layers": 12,
        "heads": 12,
        "act": "quick_gelu",
    }
    assert net["text"]["width"] == 512 and net["text"]["layers"] == 12 and net["embed_dim"] == 512
    assert cfg.model.init_from == "/models/openai-vit-b-16" and cfg.model.init_quick_gelu is True
    opt = cfg.model.optimizer
    assert (opt.lr, list(opt.betas), opt.eps, opt.weight_decay) == (1e-4, [0.9, 0.98], 1e-6, 0.2)
    assert opt.decay_embeddings is True  # open_clip's weight-decay rule, as the reference run
    assert cfg.model.scheduler.warmup_steps == 1000
    assert cfg.data.text_type == "mixed" and cfg.data._target_.endswith("ShardDataModule")
    t = cfg.trainer
    assert cfg.data.batch_size * t.devices * t.num_nodes * cfg.model.accum_freq == 32768
    assert (t.strategy, t.precision, t.max_epochs) == ("ddp", "bf16-mixed", 100)
    # without the weights, the run stops first thing with one line naming the key
    cfg = make_cfg(tmp_path, ["experiment=bioclip", *data])
    with pytest.raises(ValueError, match="model.init_from is required by this experiment"):
        train(cfg)
