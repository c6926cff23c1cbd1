"""Tests for open_clip interop (tolclip.models loading and export, `tolclip convert`): open_clip / BioCLIP
weights in, open_clip model folders out, clear errors.

open_clip is the reference throughout: models are built with random (perturbed) weights by open_clip itself,
saved in the formats open_clip and BioCLIP use, loaded into our towers and compared on the same inputs.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import safetensors.torch
import torch
from omegaconf import OmegaConf
from PIL import Image

from tolclip.cli.convert import main
from tolclip.core.constants import CLIP_MEAN, CLIP_STD
from tolclip.core.tokenizer import get_tokenizer
from tolclip.data.transforms import Preprocess
from tolclip.models.checkpoints import load_net
from tolclip.models.config import net_config
from tolclip.models.export import export_open_clip
from tolclip.models.loading import LoadedModel, load_model, load_open_clip, load_tolclip
from tolclip.models.open_clip_config import infer_net_config, open_clip_kwargs
from tolclip.models.towers import CLIP

CAPTIONS = [
    "a photo of Corvus corax, common raven.",
    "Animalia Chordata Aves Passeriformes Corvidae Pica pica",
    "a photo of fly agaric &amp; Amanita muscaria",
]

# A bare state dict shows heads only as width / 64 (open_clip's head width): these widths are multiples of 64.
SMALL = {
    "embed_dim": 64,
    "vision": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 2, "heads": 2, "act": "gelu"},
    "text": {"context_length": 16, "width": 128, "layers": 2, "heads": 2, "act": "gelu"},
}
# Head widths of 32 and 48 and a non-default MLP: only a folder's open_clip_config.json can carry these.
ODD = {
    "embed_dim": 48,
    "vision": {"image_size": 32, "patch_size": 8, "width": 96, "layers": 2, "heads": 3, "mlp_ratio": 2.0},
    "text": {"context_length": 16, "width": 96, "layers": 2, "heads": 2},
}


pytestmark = pytest.mark.usefixtures("single_thread")


def with_act(cfg: dict, act: str) -> dict:
    return {**cfg, "vision": {**cfg["vision"], "act": act}, "text": {**cfg["text"], "act": act}}


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random biases / LayerNorms (open_clip and we init them to 0 / 1) and a non-initial temperature."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1 and name != "logit_scale":
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model.logit_scale.fill_(math.log(30.0))


def open_clip_model(cfg: dict, seed: int = 0) -> open_clip.model.CLIP:
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**open_clip_kwargs(cfg))
    perturb(model, seed)
    return model.eval()


def pil_images(size: int) -> list[Image.Image]:
    """A landscape and a portrait image with structure at several scales (resizing is not trivial)."""
    rng = np.random.default_rng(0)
    out = []
    for w, h in ((int(size * 1.5), size + 7), (size - 3, size * 2)):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 37 * 6], axis=-1)
        out.append(Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)))
    return out


@torch.no_grad()
def outputs(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised embeddings and logits; the same calls work on open_clip's CLIP and ours."""
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(tokens, normalize=True)
    return {"image": img, "text": txt, "logits": model.logit_scale.exp() * img @ txt.T}


def max_diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: (a[k] - b[k]).abs().max().item() for k in a}


def assert_same_outputs(ours: dict, ref: dict, atol: float) -> None:
    diffs = max_diffs(ours, ref)
    print("max abs diff:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert diffs["image"] <= atol and diffs["text"] <= atol, diffs
    assert diffs["logits"] <= atol * ref["logits"].abs().max().item() * 2, diffs  # logits are ~scale x cosine
    assert ref["logits"].std() > 1e-3  # the inputs are told apart: equality means something


def write_folder(
    folder: Path, model_cfg: dict, weights: dict | Path, preprocess_cfg: dict | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, **({"preprocess_cfg": preprocess_cfg} if preprocess_cfg else {})}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if isinstance(weights, Path):
        os.link(weights, folder / "open_clip_model.safetensors")  # same bytes, no second copy
    else:
        safetensors.torch.save_file(weights, folder / "open_clip_model.safetensors")
    return folder


# --------------------------------------------------------------------------------------------------
# Architecture inference and tokens


def test_infer_net_config_from_shapes() -> None:
    vit_b16 = net_config("vit_b16")
    with torch.device("meta"):  # shapes only
        sd = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, device="meta").state_dict()
        small = open_clip.model.CLIP(**open_clip_kwargs(SMALL)).state_dict()
        odd = open_clip.model.CLIP(**open_clip_kwargs(with_act(ODD, "gelu"))).state_dict()
    assert infer_net_config(sd, quick_gelu=True) == vit_b16  # the BioCLIP architecture, exactly our config
    assert infer_net_config(sd, quick_gelu=False)["text"]["act"] == "gelu"
    assert infer_net_config(small, quick_gelu=False) == SMALL
    with pytest.raises(ValueError, match="width 96 is not a multiple of 64"):
        infer_net_config(odd, quick_gelu=False)
    guided = infer_net_config(odd, quick_gelu=False, vision_heads=3, text_heads=2)
    assert guided == with_act(ODD, "gelu")
    with pytest.raises(ValueError, match="OpenAI.*LAION"):
        infer_net_config(small, quick_gelu=None)


@pytest.mark.parametrize("context_length", [77, 16])
def test_our_tokens_equal_open_clip(context_length: int) -> None:
    ours = get_tokenizer(context_length)(CAPTIONS)
    theirs = open_clip.get_tokenizer("ViT-B-16", context_length=context_length)(CAPTIONS)
    assert torch.equal(ours, theirs)


# --------------------------------------------------------------------------------------------------
# ViT-B/16 (BioCLIP size) acceptance: every format open_clip / BioCLIP use gives open_clip's outputs


@pytest.fixture(scope="module")
def vit_b16(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    perturb(model)
    model.eval()
    images = pil_images(224)
    reference_preprocess = open_clip.transform.image_transform_v2(
        open_clip.transform.PreprocessCfg(**model.visual.preprocess_cfg), is_train=False
    )
    pixels = torch.stack([reference_preprocess(im) for im in images])
    tokens = open_clip.get_tokenizer("ViT-B-16")(CAPTIONS)
    ref = outputs(model, pixels, tokens)

    d = tmp_path_factory.mktemp("vit_b16")
    sd = model.state_dict()
    safetensors.torch.save_file(sd, d / "bioclip.safetensors")
    torch.save(sd, d / "bioclip.bin")
    # an open_clip training checkpoint: DDP-wrapped weights under "state_dict", next to optimizer state
    ddp = {"module." + k: v for k, v in sd.items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": ddp, "optimizer": {"state": {}}}, d / "epoch_3.pt")
    # BioCLIP's published open_clip_config.json (heads and head width left to open_clip's defaults)
    bioclip_cfg = {
        "embed_dim": 512,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
    }
    write_folder(d / "bioclip", bioclip_cfg, d / "bioclip.safetensors", {"mean": CLIP_MEAN, "std": CLIP_STD})
    del model, sd, ddp
    return {"dir": d, "images": images, "pixels": pixels, "tokens": tokens, "ref": ref}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bioclip.safetensors", "bioclip.bin", "epoch_3.pt", "bioclip"])
def test_vit_b16_formats_match_open_clip(vit_b16: dict, name: str) -> None:
    path = vit_b16["dir"] / name
    loaded = load_open_clip(path, quick_gelu=None if path.is_dir() else True)
    assert loaded.net_config == net_config("vit_b16") and not loaded.net.training
    assert loaded.source == str(path) and loaded.name == path.stem
    # the preprocessing that travels with the model is open_clip's for this model
    transform = loaded.preprocess.transform()
    pixels = torch.stack([transform(im) for im in vit_b16["images"]])
    assert (pixels - vit_b16["pixels"]).abs().max() <= 1e-6
    tokens = get_tokenizer()(CAPTIONS)
    assert torch.equal(tokens, vit_b16["tokens"])
    assert_same_outputs(outputs(loaded.net, pixels, tokens), vit_b16["ref"], atol=1e-4)


@pytest.mark.slow
def test_vit_b16_export_loads_in_open_clip(vit_b16: dict, tmp_path: Path) -> None:
    loaded = load_open_clip(vit_b16["dir"] / "bioclip.safetensors", quick_gelu=True)
    out = export_open_clip(loaded, tmp_path / "export")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    pixels = torch.stack([preprocess(im) for im in vit_b16["images"]])
    assert (pixels - vit_b16["pixels"]).abs().max() <= 1e-6
    tokens = open_clip.get_tokenizer(f"local-dir:{out}")(CAPTIONS)
    assert_same_outputs(outputs(model.eval(), pixels, tokens), outputs(loaded.net, pixels, tokens), atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Small models: activations, export round trip, preprocessing


def test_gelu_state_dict_needs_the_right_activation(tmp_path: Path) -> None:
    theirs = open_clip_model(SMALL)
    path = tmp_path / "laion.safetensors"
    safetensors.torch.save_file(theirs.state_dict(), path)
    images, tokens = torch.randn(3, 3, 32, 32), get_tokenizer(16)(CAPTIONS)
    ref = outputs(theirs, images, tokens)
    right = load_open_clip(path, quick_gelu=False)
    assert right.net_config == SMALL
    assert_same_outputs(outputs(right.net, images, tokens), ref, atol=1e-5)
    wrong = load_open_clip(path, quick_gelu=True)  # same weights, other activation: other embeddings
    assert max_diffs(outputs(wrong.net, images, tokens), ref)["image"] > 1e-3


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_export_round_trip_through_open_clip(act: str, tmp_path: Path) -> None:
    cfg = with_act(ODD, act)
    torch.manual_seed(0)
    net = CLIP(**cfg).eval()
    perturb(net)
    preprocess = Preprocess(32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bilinear")
    write_bin = act == "gelu"
    out = export_open_clip(
        net, tmp_path / "export", net_config=cfg, preprocess=preprocess, write_bin=write_bin
    )
    if write_bin:  # open_clip prefers the safetensors file: remove it so that the .bin is what loads
        (out / "open_clip_model.safetensors").unlink()
    model, _, oc_preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    assert (type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU") == (
        act == "quick_gelu"
    )
    images = pil_images(32)
    ours_t = preprocess.transform()
    pixels = torch.stack([oc_preprocess(im) for im in images])
    assert (pixels - torch.stack([ours_t(im) for im in images])).abs().max() <= 1e-6
    tokens = open_clip.get_tokenizer(f"local-dir:{out}")(CAPTIONS)
    assert torch.equal(tokens, get_tokenizer(16)(CAPTIONS))
    assert_same_outputs(outputs(net, pixels, tokens), outputs(model, pixels, tokens), atol=1e-5)

    # heads and MLP width come back from the config, not from width / 64 (gelu: read from the .bin)
    back = load_open_clip(out)
    assert back.net_config == cfg and back.preprocess == preprocess and back.name == "export"
    a, b = net.state_dict(), back.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocess_equals_open_clip(resize_mode: str, interpolation: str) -> None:
    pre = Preprocess(
        48, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1), interpolation=interpolation, resize_mode=resize_mode
    )
    theirs = open_clip.transform.image_transform(
        48, is_train=False, mean=pre.mean, std=pre.std, resize_mode=resize_mode, interpolation=interpolation
    )
    ours = pre.transform()
    images = [*pil_images(40), pil_images(60)[0].convert("L"), pil_images(60)[1].convert("RGBA")]
    for im in images:
        a, b = ours(im), theirs(im)
        assert a.shape == b.shape == (3, 48, 48)
        assert (a - b).abs().max() <= 1e-6
    assert Preprocess(48, mean=[0.5] * 3, std=0.5) == Preprocess(48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="resize_mode"):
        Preprocess(48, CLIP_MEAN, CLIP_STD, resize_mode="fit")


def test_folder_preprocess_cfg_travels(tmp_path: Path) -> None:
    theirs = open_clip_model(SMALL)
    pp = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize_mode": "squash", "size": 999}
    folder = write_folder(tmp_path / "m", open_clip_kwargs(SMALL), theirs.state_dict(), pp)
    loaded = load_open_clip(folder)
    # the image size is the model's, whatever preprocess_cfg says (as in open_clip)
    assert loaded.preprocess == Preprocess(32, (0.5,) * 3, (0.25,) * 3, resize_mode="squash")
    _, _, oc_pre = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    im = pil_images(32)[0]
    assert (loaded.preprocess.transform()(im) - oc_pre(im)).abs().max() <= 1e-6


# --------------------------------------------------------------------------------------------------
# Our checkpoints, specs, CLI


@pytest.fixture
def tolclip_run(tmp_path: Path) -> tuple[Path, CLIP]:
    """A training run directory as Lightning + Hydra write it: checkpoints/last.ckpt and .hydra/config.yaml."""
    cfg = with_act(ODD, "quick_gelu")
    torch.manual_seed(0)
    net = CLIP(**cfg)
    perturb(net)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    torch.save({"epoch": 1, "state_dict": {"net." + k: v for k, v in net.state_dict().items()}}, ckpt)
    model = {
        "_target_": "tolclip.training.clip_module.CLIPLitModule",
        "net": {"_target_": "tolclip.models.towers.CLIP", **cfg},
    }
    OmegaConf.save(OmegaConf.create({"model": model}), run / ".hydra" / "config.yaml")
    return ckpt, net.eval()


def test_load_tolclip_uses_the_run_config(tolclip_run: tuple[Path, CLIP], tmp_path: Path) -> None:
    ckpt, net = tolclip_run
    loaded = load_tolclip(ckpt)
    assert loaded.net_config == with_act(ODD, "quick_gelu") and loaded.name == "last"
    assert loaded.preprocess == Preprocess(32, CLIP_MEAN, CLIP_STD)  # our eval transform's settings
    a, b = net.state_dict(), loaded.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not loaded.net.training

    assert isinstance(
        load_net(ckpt, OmegaConf.create({"_target_": "tolclip.models.towers.CLIP", **ODD})), CLIP
    )

    alone = tmp_path / "alone.ckpt"  # outside its run: the config must be given
    alone.write_bytes(ckpt.read_bytes())
    with pytest.raises(ValueError, match="no net config"):
        load_tolclip(alone)
    with pytest.raises(ValueError, match="does not match the model config"):
        load_tolclip(alone, net_config=SMALL)
    spec = {"kind": "tolclip", "path": str(alone), "net_config": with_act(ODD, "quick_gelu"), "name": "mine"}
    assert load_model(spec).name == "mine"


def test_load_model_spec(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(open_clip_model(SMALL).state_dict(), path)
    loaded = load_model({"kind": "open_clip", "path": path, "quick_gelu": False})
    assert isinstance(loaded, LoadedModel) and loaded.name == "w" and loaded.net_config == SMALL
    with pytest.raises(ValueError, match="unknown model kind 'clip'"):
        load_model({"kind": "clip", "path": path})
    with pytest.raises(ValueError, match="unknown keys.*'pretrained'"):
        load_model({"kind": "open_clip", "path": path, "pretrained": "laion2b"})
    with pytest.raises(ValueError, match="quick_gelu applies to kind 'open_clip'"):
        load_model({"kind": "tolclip", "path": path, "quick_gelu": True})


def test_cli_export_and_check(
    tolclip_run: tuple[Path, CLIP], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt, net = tolclip_run
    out = tmp_path / "hf"
    assert main(["export", str(ckpt), str(out)]) == 0
    assert main(["export", str(ckpt), str(out)]) == 2  # a second export refuses the used folder
    assert "is not empty; use --force" in capsys.readouterr().err
    assert main(["export", str(ckpt), str(out), "--force"]) == 0
    model = open_clip.create_model(f"local-dir:{out}").eval()
    images, tokens = torch.randn(2, 3, 32, 32), get_tokenizer(16)(CAPTIONS)
    assert_same_outputs(outputs(model, images, tokens), outputs(net, images, tokens), atol=1e-5)
    capsys.readouterr()
    assert main(["check", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["net_config"] == with_act(ODD, "quick_gelu")
    assert report["parameters"] == sum(p.numel() for p in net.parameters())
    assert main(["check", str(tmp_path / "nowhere.pt")]) == 2
    assert "nowhere.pt does not exist" in capsys.readouterr().err
    bare = tmp_path / "bare.safetensors"
    safetensors.torch.save_file(open_clip_model(SMALL).state_dict(), bare)
    assert main(["check", str(bare)]) == 2 and "quick_gelu" in capsys.readouterr().err
    assert main(["check", str(bare), "--no-quick-gelu"]) == 0


# --------------------------------------------------------------------------------------------------
# Errors: a ValueError / FileNotFoundError naming the file and the problem


@pytest.fixture(scope="module")
def small_sd() -> dict[str, torch.Tensor]:
    return open_clip_model(SMALL).state_dict()


def save(sd: dict, path: Path) -> Path:
    safetensors.torch.save_file(sd, path)
    return path


def test_bare_state_dict_needs_quick_gelu(small_sd: dict, tmp_path: Path) -> None:
    path = save(small_sd, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="quick_gelu=True for OpenAI.*quick_gelu=False.*LAION") as info:
        load_open_clip(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.update(logit_bias=torch.zeros(1)), "logit_bias"),
        (lambda sd: sd.update({"visual.attn_pool.query": torch.zeros(4, 128)}), "attentional pooling"),
        (
            lambda sd: sd.update({"visual.extra.weight": torch.zeros(2)}),
            r"1 unexpected keys.*'visual\.extra\.weight'",
        ),
        (lambda sd: sd.pop("visual.ln_post.bias"), r"1 missing keys.*'visual\.ln_post\.bias'"),
        (
            lambda sd: sd.update({"visual.ln_pre.weight": torch.ones(129)}),
            r"shape mismatch.*visual\.ln_pre\.weight: \(129,\) in the file, \(128,\) expected",
        ),
        (
            lambda sd: sd.pop("visual.conv1.weight"),
            r"missing key 'visual\.conv1\.weight'.*not an open_clip ViT",
        ),
    ],
    ids=["logit_bias", "attn_pool", "unexpected", "missing", "shape", "not_vit"],
)
def test_weights_that_do_not_fit(small_sd: dict, tmp_path: Path, edit, message: str) -> None:
    sd = dict(small_sd)
    edit(sd)
    path = save(sd, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=message) as info:
        load_open_clip(path, quick_gelu=False)
    assert str(path) in str(info.value)


def test_files_that_are_not_state_dicts(tmp_path: Path) -> None:
    jit = tmp_path / "ViT-B-16.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI's weights are JIT archives
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), jit)
    with pytest.raises(ValueError, match=r"TorchScript archive.*state_dict\(\)") as info:
        load_open_clip(jit)  # reported before the missing quick_gelu: choosing one would not help
    assert str(jit) in str(info.value)

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.bin could not be read as a weights-only PyTorch state dict"):
        load_open_clip(junk, quick_gelu=True)
    odd = tmp_path / "odd.pt"
    torch.save({"weights": [1, 2]}, odd)
    with pytest.raises(ValueError, match="odd.pt is not a state dict of tensors"):
        load_open_clip(odd, quick_gelu=True)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="broken.safetensors is not a readable safetensors file"):
        load_open_clip(broken, quick_gelu=True)
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        load_open_clip(tmp_path / "missing.safetensors", quick_gelu=True)
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.ckpt does not exist"):
        load_tolclip(tmp_path / "missing.ckpt")


def test_folders_open_clip_cannot_share(small_sd: dict, tmp_path: Path) -> None:
    model_cfg = open_clip_kwargs(SMALL)
    attn_pool = {**model_cfg, "vision_cfg": {**model_cfg["vision_cfg"], "attentional_pool": True}}
    with pytest.raises(ValueError, match="vision_cfg.attentional_pool=True is not supported"):
        load_open_clip(write_folder(tmp_path / "a", attn_pool, small_sd))
    hf_text = {**model_cfg, "text_cfg": {"hf_model_name": "roberta-base"}}
    with pytest.raises(ValueError, match="text_cfg.hf_model_name='roberta-base' is not supported"):
        load_open_clip(write_folder(tmp_path / "b", hf_text, small_sd))
    with pytest.raises(ValueError, match="says quick_gelu=False, but quick_gelu=True was asked"):
        load_open_clip(write_folder(tmp_path / "c", model_cfg, small_sd), quick_gelu=True)
    wrong_size = {**model_cfg, "vision_cfg": {**model_cfg["vision_cfg"], "image_size": 64}}
    with pytest.raises(
        ValueError, match=r"visual\.positional_embedding: \(17, 128\) in the file, \(65, 128\)"
    ):
        load_open_clip(write_folder(tmp_path / "d", wrong_size, small_sd))
    empty = tmp_path / "e"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_open_clip(empty)
    with pytest.raises(FileNotFoundError, match="without open_clip_config.json"):
        load_open_clip(tmp_path)


def test_export_refuses_what_open_clip_cannot_hold(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = CLIP(**SMALL)
    with pytest.raises(ValueError, match="does not describe the net"):
        export_open_clip(net, tmp_path / "x", net_config=with_act(SMALL, "quick_gelu"))
    mixed = {**SMALL, "text": {**SMALL["text"], "act": "quick_gelu"}}
    with pytest.raises(ValueError, match="same activation"):
        export_open_clip(CLIP(**mixed), tmp_path / "y")
    with pytest.raises(ValueError, match="image_size 64"):
        export_open_clip(net, tmp_path / "z", preprocess=Preprocess(64, CLIP_MEAN, CLIP_STD))
