"""Throughput options from config (issue 10, scope 4): patch dropout, torch.compile of the towers,
fused AdamW, bf16 mixed precision. Each must leave the training objective and the saved weights alone."""

from __future__ import annotations

import copy

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tolclip.models.config import NetConfig
from tolclip.models.export import export_open_clip
from tolclip.models.loading import load_open_clip
from tolclip.models.loss import ClipLoss
from tolclip.models.towers import CLIP
from tolclip.training.clip_module import CLIPLitModule
from tolclip.training.schedule import resolve_fused

from helpers import MICRO, make_cfg

# 32 px, 8 px patches: 16 patch tokens plus the class token.
NET = dict(
    embed_dim=16,
    vision=dict(image_size=32, patch_size=8, width=16, layers=2, heads=2),
    text=dict(context_length=77, width=16, layers=2, heads=2),
)


def batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, 77, dtype=torch.long)
    for i in range(n):
        length = 3 + i % 5
        tokens[i, 0] = 49406
        tokens[i, 1 : length + 1] = torch.randint(1, 49406, (length,), generator=g)
        tokens[i, length + 1] = 49407
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "text": tokens}


def net(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**NET)


def tokens_into_blocks(model: CLIP, images: torch.Tensor) -> int:
    """How many tokens per image reach the first ViT block."""
    seen = []
    hook = model.visual.trunk.norm_pre.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    try:
        model.encode_image(images)
    finally:
        hook.remove()
    return seen[0]


# ---------------------------------------------------------------------------------------------- patch dropout


def test_patch_dropout_drops_tokens_in_training_only_and_keeps_the_weights():
    plain, dropped = net(), net()
    dropped.set_patch_dropout(0.5)
    images = batch()["image"]
    assert dropped.visual.patch_dropout == 0.5 and plain.visual.patch_dropout == 0.0

    dropped.train()
    assert tokens_into_blocks(dropped, images) == 1 + 8  # class token + half of 16 patches
    # The class token is kept: it is the first token after the drop, unchanged.
    seen = []
    hook = dropped.visual.trunk.patch_drop.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    dropped.encode_image(images)
    hook.remove()
    ((before, after),) = seen
    assert torch.equal(after[:, 0], before[:, 0])

    for m in (plain, dropped):
        m.eval()
    assert tokens_into_blocks(dropped, images) == 1 + 16
    with torch.no_grad():
        a, b = plain(images, batch()["text"]), dropped(images, batch()["text"])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # A training option, not architecture: no new weights, same net config.
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    assert NetConfig.of(dropped) == NetConfig.of(plain) == NetConfig.from_dict(NET)
    dropped.set_patch_dropout(0.0)
    dropped.train()
    assert tokens_into_blocks(dropped, images) == 1 + 16


@pytest.mark.parametrize("bad", [1.0, -0.1, True, "0.5"])
def test_patch_dropout_out_of_range_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"patch_dropout must be a fraction in \[0, 1\)"):
        net().set_patch_dropout(bad)


def test_export_round_trips_with_patch_dropout_and_compile(tmp_path):
    model = net()
    reference = copy.deepcopy(model).eval()
    model.set_patch_dropout(0.3)
    model.compile_towers()  # lazy: nothing is compiled until the first call, which this test never makes
    assert model.state_dict().keys() == reference.state_dict().keys()
    out = export_open_clip(model, tmp_path / "export")
    loaded = load_open_clip(out).net.eval()
    assert NetConfig.of(loaded) == NetConfig.of(reference)
    b = batch()
    with torch.no_grad():
        for x, y in zip(loaded(b["image"], b["text"]), reference(b["image"], b["text"]), strict=True):
            assert torch.equal(x, y)


# --------------------------------------------------------------------------------------- config plumbing


def test_throughput_keys_reach_the_module_from_config(tmp_path):
    cfg = make_cfg(
        tmp_path, [*MICRO, "model.patch_dropout=0.25", "model.compile=true", "model.optimizer.fused=false"]
    )
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert module.net.visual.patch_dropout == 0.25
    # Compiled in place: the towers are still the towers and their parameter names do not change.
    for tower in (module.net.visual, module.net.text):
        assert tower._compiled_call_impl is not None
    plain = hydra.utils.instantiate(make_cfg(tmp_path / "plain", MICRO).model, _convert_="all")
    assert module.state_dict().keys() == plain.state_dict().keys()
    assert plain.net.visual._compiled_call_impl is None and plain.net.visual.patch_dropout == 0.0
    assert plain.hparams.optimizer["fused"] == "auto" and module.hparams.optimizer["fused"] is False


def test_bad_throughput_values_are_clear_errors():
    def make(**kw) -> CLIPLitModule:
        return CLIPLitModule(net=net(), optimizer={"lr": 1e-3}, scheduler={}, **kw)

    with pytest.raises(ValueError, match="model.compile must be true or false"):
        make(compile="yes")
    with pytest.raises(ValueError, match="patch_dropout"):
        make(patch_dropout=1.5)
    assert resolve_fused("auto", torch.device("cuda")) is True
    assert resolve_fused("auto", torch.device("cpu")) is False
    assert resolve_fused(True, torch.device("cpu")) is True
    with pytest.raises(ValueError, match="model.optimizer.fused must be auto, true or false, got 'on'"):
        resolve_fused("on", torch.device("cpu"))


# ------------------------------------------------------------------------- fused AdamW and bf16 through fit


class Record(Callback):
    """Each step's loss, and the dtype the image projection computed in."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.dtypes: set[torch.dtype] = set()

    def on_train_start(self, trainer, module) -> None:
        module.net.visual.proj.register_forward_hook(lambda m, i, o: self.dtypes.add(o.dtype))

    def on_train_batch_end(self, trainer, module, outputs, *args) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(
    steps: int = 4, precision: str = "32-true", compile: bool = False, **optimizer
) -> tuple[CLIPLitModule, L.Trainer, Record]:
    module = CLIPLitModule(
        net=net(),
        optimizer={"lr": 1e-2, "weight_decay": 0.1, **optimizer},
        scheduler={"warmup_steps": 0},
        compile=compile,
    )
    record = Record()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    data = [batch(seed=i) for i in range(steps)]
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    return module, trainer, record


def key_bias_free(name: str, p: torch.Tensor) -> torch.Tensor:
    """`p` without attention key biases: softmax ignores them, so their gradient is only rounding noise,
    which Adam scales up to full steps in an arbitrary direction in either implementation."""
    if name.endswith("k_proj.bias"):
        return p[:0]
    if name.endswith("qkv.bias"):
        q, _, v = p.chunk(3)
        return torch.cat([q, v])
    return p


def test_fused_adamw_on_cpu_matches_the_default_loop(single_thread):
    fused, fused_trainer, _ = fit(fused=True)
    loop, loop_trainer, _ = fit(fused="auto")  # auto: not fused on CPU
    assert fused_trainer.optimizers[0].defaults["fused"] is True
    assert not loop_trainer.optimizers[0].defaults["fused"]
    start = net().state_dict()
    for (name, a), b in zip(fused.net.named_parameters(), loop.net.parameters(), strict=True):
        torch.testing.assert_close(
            key_bias_free(name, a), key_bias_free(name, b), rtol=1e-5, atol=1e-5, msg=name
        )
        assert not torch.equal(a, start[name]), f"{name} was not trained"


def test_bf16_mixed_step_runs_in_bf16_with_a_loss_close_to_fp32(single_thread):
    _, _, fp32 = fit(precision="32-true")
    _, _, bf16 = fit(precision="bf16-mixed")
    assert fp32.dtypes == {torch.float32} and bf16.dtypes == {torch.bfloat16}
    assert len(bf16.losses) == 4 and all(torch.isfinite(torch.tensor(bf16.losses)))
    torch.testing.assert_close(torch.tensor(bf16.losses), torch.tensor(fp32.losses), rtol=3e-2, atol=3e-2)
    assert bf16.losses != fp32.losses  # it really computed in another precision


# --------------------------------------------------------------------------------------------- compile


def loss_and_grads(model: CLIP, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = ClipLoss()(*model(b["image"], b["text"]))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.heavy
def test_compiled_towers_give_the_eager_loss_and_gradients(single_thread):
    eager = net().train()
    compiled = copy.deepcopy(eager)
    compiled.compile_towers()
    for seed in range(2):
        b = batch(seed=seed)
        loss, grads = loss_and_grads(eager, b)
        c_loss, c_grads = loss_and_grads(compiled, b)
        torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-6)
        assert c_grads.keys() == grads.keys()
        for name, g in grads.items():
            # Fused kernels sum in another order: tolerance relative to the tensor's largest gradient.
            scale = max(1.0, float(g.abs().max()))
            torch.testing.assert_close(c_grads[name], g, rtol=1e-4, atol=1e-5 * scale, msg=name)
    compiled.eval()
    eager.eval()
    with torch.no_grad():
        b = batch(seed=5)
        torch.testing.assert_close(compiled.encode_image(b["image"]), eager.encode_image(b["image"]))


@pytest.mark.heavy
def test_training_with_compiled_towers_follows_the_eager_run(single_thread):
    _, _, eager = fit(steps=3)
    module, _, compiled = fit(steps=3, compile=True)
    assert module.net.visual._compiled_call_impl is not None
    torch.testing.assert_close(
        torch.tensor(compiled.losses), torch.tensor(eager.losses), rtol=1e-4, atol=1e-5
    )


def test_decay_embeddings_selects_open_clips_weight_decay_rule(single_thread):
    """BioCLIP's reference (open_clip) decays the positional and token embeddings; tolclip's default
    does not. The optimiser's groups must follow `model.optimizer.decay_embeddings`."""

    def no_decay_ids(trainer: L.Trainer) -> set[int]:
        groups = trainer.optimizers[0].param_groups
        return {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}

    for decay in (False, True):
        module, trainer, _ = fit(steps=1, decay_embeddings=decay)
        names = {id(p): n for n, p in module.net.named_parameters()}
        undecayed = {names[i] for i in no_decay_ids(trainer)}
        embeddings = {"visual.trunk.pos_embed", "text.transformer.embeddings.token_embedding.weight"}
        assert "visual.trunk.cls_token" in undecayed and "logit_scale" in undecayed
        if decay:  # open_clip: every 2-D tensor decays, embeddings included
            assert not embeddings & undecayed
        else:
            assert embeddings <= undecayed
