"""Tests for tolclip.models.towers (timm image tower, HF text tower, CLIP wrapper) and its open_clip equivalence."""

from __future__ import annotations

import copy
import math

import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from timm.layers.activations import QuickGELU
from transformers.activations import QuickGELUActivation

from tolclip.models.config import net_config
from tolclip.models.open_clip_config import open_clip_kwargs
from tolclip.models.open_clip_state_dict import open_clip_state_dict_to_ours, ours_state_dict_to_open_clip
from tolclip.models.towers import CLIP, ImageTower, TextTower

SOT, EOT = 49406, 49407

# Smaller than the tiny config so every test is quick; same structure (2 heads per tower, 64 px -> 32 px images).
MICRO = {
    "embed_dim": 32,
    "vision": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 2},
    "text": {"context_length": 16, "width": 32, "layers": 2, "heads": 2},
}


def micro_cfg(act: str = "gelu") -> dict:
    cfg = copy.deepcopy(MICRO)
    cfg["vision"]["act"] = cfg["text"]["act"] = act
    return cfg


def make_tokens(lengths: list[int], context: int = 16, seed: int = 0) -> torch.Tensor:
    """SOT, ``n`` random word ids, EOT, zero padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), context, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, 0] = SOT
        tokens[i, 1 : n + 1] = torch.randint(1, SOT, (n,), generator=g)
        tokens[i, n + 1] = EOT
    return tokens


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(**micro_cfg()).eval()


def test_shapes_and_normalisation(model: CLIP) -> None:
    images = torch.randn(3, 3, 32, 32)
    tokens = make_tokens([3, 7, 14])
    img, txt, scale = model(images, tokens)
    assert img.shape == txt.shape == (3, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert scale.ndim == 0 and math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-5)
    raw = model.encode_image(images, normalize=False)
    assert raw.shape == (3, 32) and not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), img)
    assert model.encode_text(tokens, normalize=False).shape == (3, 32)


def test_architecture_details(model: CLIP) -> None:
    trunk = model.visual.trunk
    assert trunk.patch_embed.proj.bias is None  # open_clip's conv1 has no bias
    assert trunk.cls_token is not None and trunk.pos_embed.shape == (1, 16 + 1, 64)
    assert isinstance(trunk.norm_pre, torch.nn.LayerNorm) and isinstance(trunk.norm, torch.nn.LayerNorm)
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    assert model.visual.proj.bias is None and model.text.proj.bias is None
    cfg = model.text.transformer.config
    assert cfg.eos_token_id == EOT and cfg._attn_implementation == "sdpa"


def test_pooling_uses_end_of_text(model: CLIP) -> None:
    tokens = make_tokens([5, 5])
    base = model.encode_text(tokens)
    after = tokens.clone()
    after[:, 8:] = torch.randint(1, SOT, (2, 8))  # everything after the EOT at position 6
    torch.testing.assert_close(model.encode_text(after), base, rtol=0, atol=0)
    before = tokens.clone()
    before[:, 3] = (before[:, 3] + 1) % SOT
    assert (model.encode_text(before) - base).abs().amax(dim=-1).min() > 1e-4
    # HF's own pooler (eos_token_id = 49407) picks the same position as our argmax pooling
    hf = model.text.transformer(input_ids=tokens).pooler_output
    ours = model.text.forward_hidden(tokens)[torch.arange(2), tokens.argmax(-1)]
    torch.testing.assert_close(hf, ours)


def test_causal_mask(model: CLIP) -> None:
    tokens = make_tokens([12, 12])
    changed = tokens.clone()
    changed[:, 8] = (changed[:, 8] + 7) % SOT
    h0, h1 = model.text.forward_hidden(tokens), model.text.forward_hidden(changed)
    torch.testing.assert_close(h1[:, :8], h0[:, :8], rtol=0, atol=1e-6)
    assert (h1[:, 8:] - h0[:, 8:]).abs().amax() > 1e-3


def test_shorter_and_longer_sequences(model: CLIP) -> None:
    tokens = make_tokens([4, 9])  # context 16
    full = model.encode_text(tokens)
    torch.testing.assert_close(model.encode_text(tokens[:, :11]), full, rtol=0, atol=1e-6)
    # a 77-token tokenizer output: padding beyond the context is dropped
    long = torch.cat([tokens, torch.zeros(2, 61, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model.encode_text(long), full, rtol=0, atol=1e-6)
    # a caption longer than the context is cut and its last kept token becomes EOT (open_clip tokenizer rule)
    over = make_tokens([4, 30], context=77)
    expect = over[:, :16].clone()
    expect[1, -1] = EOT
    assert torch.equal(model.text.fit_context(over), expect)
    torch.testing.assert_close(model.encode_text(over), model.encode_text(expect), rtol=0, atol=0)


def test_logit_scale_clamp() -> None:
    torch.manual_seed(0)
    m = CLIP(**micro_cfg(), max_logit_scale=100.0)
    with torch.no_grad():
        m.logit_scale.fill_(7.0)
    _, _, scale = m(torch.randn(2, 3, 32, 32), make_tokens([3, 4]))
    assert scale.item() == pytest.approx(100.0)
    m.clamp_logit_scale_()
    assert m.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        m.logit_scale.fill_(-1.0)
    m.clamp_logit_scale_()
    assert m.logit_scale.item() == 0.0 and isinstance(m.logit_scale, torch.nn.Parameter)


def _loss_and_grads(m: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    m.zero_grad(set_to_none=True)
    img, txt, scale = m(images, tokens)
    logits = scale * img @ txt.T
    labels = torch.arange(len(img))
    loss = (
        torch.nn.functional.cross_entropy(logits, labels)
        + torch.nn.functional.cross_entropy(logits.T, labels)
    ) / 2
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_grad_checkpointing_matches() -> None:
    torch.manual_seed(0)
    m = CLIP(**micro_cfg()).train()
    images, tokens = torch.randn(4, 3, 32, 32), make_tokens([2, 5, 9, 13])
    loss0, g0 = _loss_and_grads(m, images, tokens)

    calls = {"vision": 0, "text": 0}
    # hooks on a submodule: HF checkpoints `forward` (not `__call__`), so hooks on the layer itself fire once
    m.visual.trunk.blocks[0].norm1.register_forward_pre_hook(
        lambda *_: calls.__setitem__("vision", calls["vision"] + 1)
    )
    m.text.transformer.encoder.layers[0].layer_norm1.register_forward_pre_hook(
        lambda *_: calls.__setitem__("text", calls["text"] + 1)
    )
    m.set_grad_checkpointing(True)
    loss1, g1 = _loss_and_grads(m, images, tokens)
    assert calls == {"vision": 2, "text": 2}  # forward re-entered in backward: checkpointing is really on
    torch.testing.assert_close(loss1, loss0)
    assert g1.keys() == g0.keys() and len(g0) == len(list(m.parameters()))
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], msg=name)

    m.set_grad_checkpointing(False)
    calls.update(vision=0, text=0)
    _loss_and_grads(m, images, tokens)
    assert calls == {"vision": 1, "text": 1}


def test_quick_gelu_is_used() -> None:
    torch.manual_seed(0)
    gelu, quick = CLIP(**micro_cfg("gelu")), CLIP(**micro_cfg("quick_gelu"))
    assert all(isinstance(b.mlp.act, QuickGELU) for b in quick.visual.trunk.blocks)
    assert all(
        isinstance(layer.mlp.activation_fn, QuickGELUActivation)
        for layer in quick.text.transformer.encoder.layers
    )
    assert not any(isinstance(b.mlp.act, QuickGELU) for b in gelu.visual.trunk.blocks)
    quick.load_state_dict(gelu.state_dict())  # same weights, only the activation differs
    images, tokens = torch.randn(2, 3, 32, 32), make_tokens([3, 6])
    with torch.no_grad():
        assert not torch.allclose(gelu.encode_image(images), quick.encode_image(images), atol=1e-5)
        assert not torch.allclose(gelu.encode_text(tokens), quick.encode_text(tokens), atol=1e-5)
    with pytest.raises(ValueError, match="act"):
        ImageTower(8, 32, 8, 64, 1, 2, act="relu")


def test_accepts_dictconfig() -> None:
    cfg = OmegaConf.create(micro_cfg())
    m = CLIP(cfg.embed_dim, cfg.vision, cfg.text)
    assert m.visual.proj.out_features == 32 and m.text.context_length == 16
    with pytest.raises(ValueError, match="embed_dim"):
        CLIP(32, {**MICRO["vision"], "embed_dim": 64}, MICRO["text"])


def test_no_weight_decay_names(model: CLIP) -> None:
    names = model.no_weight_decay_names()
    params = dict(model.named_parameters())
    assert {n for n, p in params.items() if p.ndim < 2} <= names
    assert {
        "logit_scale",
        "visual.trunk.cls_token",
        "visual.trunk.pos_embed",
        "text.transformer.embeddings.position_embedding.weight",
        "text.transformer.embeddings.token_embedding.weight",
    } <= names
    decayed = set(params) - names
    assert decayed and all(params[n].ndim >= 2 and n.endswith("weight") for n in decayed)
    assert "visual.proj.weight" in decayed and "visual.trunk.patch_embed.proj.weight" in decayed
    # open_clip's rule: 2-D embeddings are decayed, the class token is not
    oc_rule = model.no_weight_decay_names(include_embeddings=False)
    assert "visual.trunk.cls_token" in oc_rule and "visual.trunk.pos_embed" not in oc_rule
    groups = model.param_groups(0.1)
    assert sum(len(g["params"]) for g in groups) == len(params) and groups[1]["weight_decay"] == 0.0


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["tiny", "vit_b16"])
def test_parameter_count_equals_open_clip(name: str) -> None:
    cfg = net_config(name)
    # meta device: shapes only, no memory or init cost (vit_b16 would otherwise take seconds)
    with torch.device("meta"):
        ours = CLIP(**cfg)
        theirs = open_clip.model.CLIP(**open_clip_kwargs(cfg))
    assert _n_params(ours) == _n_params(theirs)
    if name == "vit_b16":
        assert theirs.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
        assert _n_params(ours) == 149_620_737  # open_clip ViT-B-16 (BioCLIP)


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_open_clip_weights_give_identical_embeddings(act: str) -> None:
    cfg = micro_cfg(act)
    torch.manual_seed(1)
    theirs = open_clip.model.CLIP(**open_clip_kwargs(cfg))
    with torch.no_grad():  # open_clip leaves biases / LayerNorms at 0 / 1: randomise so the mapping is tested
        for name, p in theirs.named_parameters():
            if p.ndim == 1 and name != "logit_scale":
                p.add_(torch.randn_like(p) * 0.1)
    ours = CLIP(**cfg)
    sd = open_clip_state_dict_to_ours(theirs.state_dict())
    ours.load_state_dict(sd, strict=True)
    back = ours_state_dict_to_open_clip(ours.state_dict())
    ref = {k: v for k, v in theirs.state_dict().items() if k != "attn_mask"}
    assert back.keys() == ref.keys() and all(torch.equal(back[k], ref[k]) for k in ref)

    images, tokens = torch.randn(4, 3, 32, 32), make_tokens([1, 4, 9, 14])
    for train in (False, True):  # eval may take nn.MultiheadAttention's fast path in open_clip
        ours.train(train)
        theirs.train(train)
        with torch.no_grad():
            a_img, a_txt, a_scale = ours(images, tokens)
            b_img, b_txt, b_scale = theirs(images, tokens)[:3]
        torch.testing.assert_close(a_img, b_img, rtol=0, atol=1e-5)
        torch.testing.assert_close(a_txt, b_txt, rtol=0, atol=1e-5)
        torch.testing.assert_close(a_scale, b_scale)


def test_reference_configs() -> None:
    vit_b16, tiny = net_config("vit_b16"), net_config("tiny")
    assert vit_b16["embed_dim"] == 512 and vit_b16["vision"]["act"] == vit_b16["text"]["act"] == "quick_gelu"
    assert tiny["text"]["context_length"] == 77
    kw = open_clip_kwargs(tiny)
    assert kw["vision_cfg"]["head_width"] == 64 and kw["quick_gelu"] is False
    t = TextTower(16, context_length=8, width=32, layers=1, heads=2)
    assert t.eot_token_id == EOT and t(make_tokens([2, 3], context=8)).shape == (2, 16)


def test_padding_after_last_eot_is_skipped_without_changing_embeddings():
    torch.manual_seed(0)
    tower = TextTower(embed_dim=16, context_length=77, width=32, layers=2, heads=2).eval()
    tokens = torch.zeros(3, 77, dtype=torch.long)
    for row, n in enumerate((5, 12, 30)):
        tokens[row, 0] = 49406
        tokens[row, 1:n] = torch.randint(1, 49000, (n - 1,))
        tokens[row, n] = 49407
    seen = []
    hook = tower.transformer.embeddings.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    with torch.no_grad():
        fast = tower(tokens)
        hidden = tower.forward_hidden(tokens)  # full 77 positions, no trimming
        full = tower.proj(hidden[torch.arange(3), tokens.argmax(-1)])
    hook.remove()
    assert seen[0] == 31  # trimmed to the longest caption
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
