import torch

from tolclip.models.towers import CLIP
from tolclip.training.clip_module import CLIPLitModule
from tolclip.training.schedule import warmup_cosine

MICRO = dict(
    embed_dim=16,
    vision=dict(image_size=16, patch_size=8, width=16, layers=1, heads=1),
    text=dict(context_length=77, width=16, layers=1, heads=1),
)


def module(**kw) -> CLIPLitModule:
    return CLIPLitModule(net=CLIP(**MICRO), optimizer={"lr": 1e-3}, scheduler={"warmup_steps": 2}, **kw)


def five_types(batch: int = 6) -> torch.Tensor:
    # Row b, text type t holds the value 10*t + 1 everywhere, so the choice is readable back.
    return torch.stack([torch.full((batch, 77), 10 * t + 1) for t in range(5)], dim=1)


def test_mixed_per_step_picks_one_type_for_the_batch_and_varies_with_step():
    m = module(mixed_per="step")
    chosen = []
    for step in range(40):
        tokens, name = m.select_text(five_types(), step)
        assert len(set(tokens[:, 0].tolist())) == 1
        chosen.append(name)
    assert len(set(chosen)) == 5
    # The same step always gives the same type: every DDP rank agrees without communication.
    assert m.select_text(five_types(), 7)[1] == module(mixed_per="step").select_text(five_types(), 7)[1]


def test_mixed_per_sample_varies_within_a_batch():
    m = module(mixed_per="sample")
    tokens, _ = m.select_text(five_types(batch=64), 3)
    assert len(set(tokens[:, 0].tolist())) == 5
    single = torch.ones(4, 77, dtype=torch.long)
    assert m.select_text(single, 3)[0] is single


def test_warmup_then_cosine():
    f = warmup_cosine(10, 110)
    assert f(0) == 0.1 and f(9) == 1.0
    assert abs(f(60) - 0.5) < 1e-9 and f(110) == 0.0
    g = warmup_cosine(0, 100, min_ratio=0.1)
    assert g(0) == 1.0 and abs(g(100) - 0.1) < 1e-12
