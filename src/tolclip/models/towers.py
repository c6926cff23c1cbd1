"""CLIP towers for tolclip: a timm ViT image tower and a Hugging Face CLIP text tower.

The architecture mirrors open_clip's ``CLIP`` (OpenAI ViT-B/16, BioCLIP) one-to-one so that open_clip
checkpoints can be converted into these modules and exported back (see ``tolclip.models.open_clip_state_dict``):

* vision: conv patch embed (no bias), class token, learned positional embedding, ``ln_pre``, pre-norm
  blocks, final LayerNorm on the class token (``ln_post``), bias-free linear projection;
* text: token + positional embedding, causal pre-norm blocks, final LayerNorm, pooled at the
  end-of-text token (the largest token id, i.e. ``argmax`` of the ids as in open_clip), bias-free
  linear projection.

All LayerNorms use eps=1e-5 (PyTorch / open_clip default; timm's own default would be 1e-6).
Weight decay rule: see :meth:`CLIP.no_weight_decay_names` / :meth:`CLIP.param_groups`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import PatchDropout
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

__all__ = [
    "ACTIVATIONS",
    "CLIP",
    "ImageTower",
    "TextTower",
]

#: Supported activations; the same names are understood by timm and by transformers' ``ACT2FN``.
ACTIVATIONS = ("gelu", "quick_gelu")

# Model sizes live in configs/model/net/*.yaml (tolclip.models.config.net_config reads them).


def _check_act(act: str) -> str:
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    return act


def _init_blocks(linears: list[tuple[nn.Linear, nn.Linear, list[nn.Linear], nn.Linear]], width: int) -> None:
    """open_clip / OpenAI CLIP transformer init: normal weights, depth-scaled residual outputs, zero biases.

    Each tuple is (fc1, fc2, qkv-in-projections, attn-out-projection) of one block.
    """
    layers = len(linears)
    attn_std = width**-0.5
    proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
    fc_std = (2 * width) ** -0.5
    for fc1, fc2, qkv, out in linears:
        for lin in qkv:
            nn.init.normal_(lin.weight, std=attn_std)
        nn.init.normal_(out.weight, std=proj_std)
        nn.init.normal_(fc1.weight, std=fc_std)
        nn.init.normal_(fc2.weight, std=proj_std)
        for lin in (*qkv, out, fc1, fc2):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)


class ImageTower(nn.Module):
    """ViT image encoder: timm ``VisionTransformer`` trunk (CLIP layout) + bias-free projection.

    ``trunk`` is built with ``pre_norm=True`` (which also makes timm drop the patch-embed conv bias, as in
    open_clip), ``global_pool='token'`` and ``num_classes=0``, so ``trunk(x)`` returns the LayerNormed
    class token (open_clip's ``ln_post`` output).
    """

    def __init__(
        self,
        embed_dim: int,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.act = _check_act(act)
        self.trunk = timm.models.vision_transformer.VisionTransformer(
            img_size=image_size,
            patch_size=patch_size,
            num_classes=0,
            global_pool="token",
            embed_dim=width,
            depth=layers,
            num_heads=heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            class_token=True,
            pre_norm=True,  # ln_pre; also removes the conv bias
            final_norm=True,  # ln_post (applied to all tokens, then the class token is taken: same result)
            fc_norm=False,
            norm_layer=nn.LayerNorm,  # eps=1e-5 as open_clip, not timm's 1e-6
            act_layer=act,
            weight_init="skip",  # we initialise below
        )
        if self.trunk.patch_embed.proj.bias is not None:  # pragma: no cover - guard against timm changes
            raise RuntimeError("timm patch embedding unexpectedly has a bias; open_clip's conv1 has none")
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip-like init (class/pos embedding and projection ~ N(0, width^-0.5), CLIP block init)."""
        t = self.trunk
        width = t.embed_dim
        scale = width**-0.5
        nn.init.normal_(t.cls_token, std=scale)
        nn.init.normal_(t.pos_embed, std=scale)
        # conv patch embed: PyTorch default (kaiming-uniform) as in open_clip
        t.patch_embed.proj.reset_parameters()
        for m in t.modules():
            if isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        _init_blocks([(b.mlp.fc1, b.mlp.fc2, [b.attn.qkv], b.attn.proj) for b in t.blocks], width)
        nn.init.normal_(self.proj.weight, std=scale)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (timm ``checkpoint_seq``)."""
        self.trunk.set_grad_checkpointing(enable)

    def set_patch_dropout(self, prob: float) -> None:
        """FLIP-style patch dropout: in training, keep a random ``1 - prob`` of the patch tokens.

        timm applies ``trunk.patch_drop`` after the positional embedding and before ``ln_pre``, as open_clip
        does; the class token is always kept, and in eval mode nothing is dropped. It is a training option,
        not architecture: the module has no weights, so state dicts and the net config are unchanged.
        """
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0.0 <= prob < 1.0:
            raise ValueError(f"patch_dropout must be a fraction in [0, 1), got {prob!r}")
        trunk = self.trunk
        trunk.patch_drop = (
            PatchDropout(float(prob), num_prefix_tokens=trunk.num_prefix_tokens)
            if prob > 0
            else nn.Identity()
        )

    @property
    def patch_dropout(self) -> float:
        """The fraction of patch tokens dropped in training (0 when off)."""
        return float(getattr(self.trunk.patch_drop, "prob", 0.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` -> unnormalised embeddings ``[B, embed_dim]``."""
        return self.proj(self.trunk(images))


class TextTower(nn.Module):
    """Causal text encoder: HF ``CLIPTextModel`` (SDPA attention) + bias-free projection.

    Pooling takes the hidden state at ``tokens.argmax(-1)`` (the end-of-text token has the largest id,
    49407 = ``vocab_size - 1``), exactly as open_clip. The HF config's ``eos_token_id`` is set to the same id
    so HF's own ``pooler_output`` agrees whenever the sequence contains an EOT; we pool ourselves so that a
    sequence without EOT behaves like open_clip (argmax) rather than HF (position 0).

    Sequences shorter than ``context_length`` are fine (positional embeddings are sliced). Longer ones are
    truncated to ``context_length``; rows whose EOT would be cut get EOT written into the last position,
    which is what the open_clip tokenizer does when it truncates.
    """

    def __init__(
        self,
        embed_dim: int,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.eot_token_id = vocab_size - 1
        self.act = _check_act(act)
        config = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=int(width * mlp_ratio),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=context_length,
            hidden_act=act,
            layer_norm_eps=1e-5,
            attention_dropout=0.0,
            pad_token_id=0,  # open_clip pads with 0
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
        )
        # SDPA: with no padding mask HF passes is_causal=True to F.scaled_dot_product_attention (no mask tensor).
        config._attn_implementation = "sdpa"
        self.transformer = CLIPTextModel(config)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self.init_weights()

    @property
    def config(self) -> CLIPTextConfig:
        return self.transformer.config

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip text init: token emb N(0, .02), positional N(0, .01), CLIP block init, proj N(0, width^-0.5)."""
        m = self.transformer
        width = m.config.hidden_size
        nn.init.normal_(m.embeddings.token_embedding.weight, std=0.02)
        nn.init.normal_(m.embeddings.position_embedding.weight, std=0.01)
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.reset_parameters()
        _init_blocks(
            [
                (
                    layer.mlp.fc1,
                    layer.mlp.fc2,
                    [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj],
                    layer.self_attn.out_proj,
                )
                for layer in m.encoder.layers
            ],
            width,
        )
        nn.init.normal_(self.proj.weight, std=width**-0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute layer activations in backward (HF, non-reentrant; active in train mode only)."""
        m = self.transformer
        if enable:
            fn = getattr(m, "activation_checkpointing_enable", None)
            if fn is not None:
                fn(activation_checkpointing_kwargs={"use_reentrant": False})
            else:  # transformers < 5
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            fn = getattr(m, "activation_checkpointing_disable", None) or m.gradient_checkpointing_disable
            fn()

    def fit_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """Truncate ``tokens`` to ``context_length`` keeping an EOT token in every row (no-op if it fits)."""
        if tokens.shape[-1] <= self.context_length:
            return tokens
        cut = tokens.argmax(dim=-1) >= self.context_length
        tokens = tokens[:, : self.context_length].clone()
        tokens[cut, -1] = self.eot_token_id
        return tokens

    def forward_hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final-LayerNormed hidden states ``[B, L, width]`` (for tests / token-level features)."""
        return self.transformer(input_ids=tokens).last_hidden_state

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, L]`` (L <= context_length, or truncated) -> unnormalised embeddings ``[B, embed_dim]``."""
        tokens = self.fit_context(tokens)
        eot = tokens.argmax(dim=-1)
        # Attention is causal, so positions after the batch's last EOT cannot change any pooled
        # state: dropping that padding gives identical embeddings at a fraction of the cost
        # (taxonomic captions use ~20-40 of the 77 positions).
        tokens = tokens[:, : int(eot.max()) + 1]
        x = self.forward_hidden(tokens)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return self.proj(x)


def _as_kwargs(cfg: Mapping[str, Any], embed_dim: int, what: str) -> dict[str, Any]:
    """Plain dict from a Mapping / OmegaConf DictConfig, checking a repeated embed_dim agrees."""
    kw = {str(k): cfg[k] for k in cfg}
    if "embed_dim" in kw and kw.pop("embed_dim") != embed_dim:
        raise ValueError(f"{what}.embed_dim disagrees with CLIP embed_dim={embed_dim}")
    return kw


class WeightDecayRule:
    """The optimiser's weight-decay split, shared by every model with our image tower (CLIP, supervised)."""

    def no_weight_decay_names(self, include_embeddings: bool = True) -> set[str]:
        """Names of parameters that should not be weight-decayed.

        Always: every parameter with ndim < 2 (biases, LayerNorm weights, ``logit_scale``). With
        ``include_embeddings`` (default): also class token, positional embeddings and the token embedding.
        ``include_embeddings=False`` reproduces open_clip's training rule (``ndim < 2`` / ln / bias /
        logit_scale; there the 1-D class embedding is excluded, but the 2-D positional and token
        embeddings are decayed) -- use it to match BioCLIP's recipe exactly.
        """
        # timm stores the class token as [1, 1, width]; it is open_clip's 1-D class_embedding, never decayed.
        names = {"visual.trunk.cls_token"}
        if include_embeddings:
            names |= {
                "visual.trunk.pos_embed",
                "text.transformer.embeddings.position_embedding.weight",
                "text.transformer.embeddings.token_embedding.weight",
            }
        names |= {name for name, p in self.named_parameters() if p.ndim < 2}
        return names

    def param_groups(self, weight_decay: float, include_embeddings: bool = True) -> list[dict[str, Any]]:
        """Two optimizer param groups (decayed / not decayed) by :meth:`no_weight_decay_names`."""
        no_wd = self.no_weight_decay_names(include_embeddings)
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if name in no_wd else decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


class CLIP(WeightDecayRule, nn.Module):
    """Two-tower CLIP with a learnable log-space temperature (open_clip semantics)."""

    def __init__(
        self,
        embed_dim: int,
        vision: Mapping[str, Any],
        text: Mapping[str, Any],
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.max_logit_scale = float(max_logit_scale)
        self.visual = ImageTower(embed_dim, **_as_kwargs(vision, embed_dim, "vision"))
        self.text = TextTower(embed_dim, **_as_kwargs(text, embed_dim, "text"))
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (normalised image features, normalised text features, ``exp(logit_scale)`` clamped to max)."""
        return (
            self.encode_image(images),
            self.encode_text(tokens),
            self.logit_scale.exp().clamp(max=self.max_logit_scale),
        )

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the log-space parameter to [0, log(max_logit_scale)] in place (call after optimizer.step())."""
        self.logit_scale.clamp_(0.0, math.log(self.max_logit_scale))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def set_patch_dropout(self, prob: float) -> None:
        """Drop a fraction ``prob`` of the image patch tokens in training (see `ImageTower.set_patch_dropout`)."""
        self.visual.set_patch_dropout(prob)

    def compile_towers(self, **kwargs: Any) -> None:
        """``torch.compile`` each tower in place (`nn.Module.compile`), so parameter names, state dicts,
        checkpoints and exports stay exactly as without it; compilation happens at the first call."""
        self.visual.compile(**kwargs)
        self.text.compile(**kwargs)
