"""Net configs: the architecture of a `towers.CLIP` as typed, comparable values, and the registry of
named architectures. The towers' sizes live in `configs/model/net/<name>.yaml` (configs own the numbers);
`net_config(name)` reads them for tools that build a bare net (benchmarks, tests, converters).

Two configs that build the same towers compare equal: `mlp_ratio` is kept as one ratio per MLP size,
and `to_dict` gives one canonical plain form (the `CLIP` keyword arguments).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from omegaconf import DictConfig, OmegaConf

from tolclip.core.resources import config_dir
from tolclip.models.towers import ACTIVATIONS, CLIP


def as_plain_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict copy of a net config (OmegaConf resolved), without Hydra's ``_target_``."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    out = OmegaConf.to_container(node, resolve=True)
    out.pop("_target_", None)
    return out


def mlp_ratio_for(hidden: int, width: int) -> float:
    """The `mlp_ratio` of an MLP of `hidden` units: timm and HF size it int(width * mlp_ratio).

    hidden / width, nudged up where float rounding would build one unit less (e.g. 960 / 352).
    """
    ratio = hidden / width
    while int(width * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _fields_of(cls: type, cfg: Any, where: str) -> dict[str, Any]:
    """The keyword arguments of dataclass `cls` from a mapping, naming unknown and missing keys."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(cfg).__name__}")
    fields = dataclasses.fields(cls)
    known = [f.name for f in fields]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; known: {known}")
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ValueError(f"{where} lacks required keys {missing}")
    return dict(cfg)


_Tower = TypeVar("_Tower", bound="_TowerConfig")


@dataclass(frozen=True)
class _TowerConfig:
    """What both towers share: integer sizes, an activation, an MLP width as a ratio of the width."""

    _where: ClassVar[str]
    _omit_at_default: ClassVar[tuple[str, ...]]  # left out of `to_dict` when at their default

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "act":
                if value not in ACTIVATIONS:
                    raise ValueError(f"{self._where}.act must be one of {ACTIVATIONS}, got {value!r}")
            elif f.name == "mlp_ratio":
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ValueError(f"{self._where}.mlp_ratio must be a positive number, got {value!r}")
            else:
                _check_positive_int(value, f"{self._where}.{f.name}")
        width, heads = self.width, self.heads
        if width % heads:
            raise ValueError(f"{self._where} width {width} is not a multiple of heads {heads}")
        # One ratio per MLP size, so that equal MLPs give equal configs.
        object.__setattr__(self, "mlp_ratio", mlp_ratio_for(int(width * self.mlp_ratio), width))

    @classmethod
    def from_dict(cls: type[_Tower], cfg: Mapping[str, Any]) -> _Tower:
        return cls(**_fields_of(cls, cfg, cls._where))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in self._omit_at_default and out[f.name] == f.default:
                del out[f.name]
        return out


@dataclass(frozen=True)
class VisionConfig(_TowerConfig):
    """`towers.ImageTower` arguments (besides embed_dim)."""

    _where: ClassVar[str] = "vision"
    _omit_at_default: ClassVar[tuple[str, ...]] = ("mlp_ratio",)

    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    act: str = "gelu"
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class TextConfig(_TowerConfig):
    """`towers.TextTower` arguments (besides embed_dim)."""

    _where: ClassVar[str] = "text"
    _omit_at_default: ClassVar[tuple[str, ...]] = ("vocab_size", "mlp_ratio")

    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    act: str = "gelu"
    vocab_size: int = 49408
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class NetConfig:
    """The architecture of a `towers.CLIP`: ``CLIP(**cfg.to_dict())`` builds it."""

    embed_dim: int
    vision: VisionConfig
    text: TextConfig

    def __post_init__(self) -> None:
        _check_positive_int(self.embed_dim, "embed_dim")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> NetConfig:
        """From CLIP keyword arguments (a plain dict, or a Hydra node whose ``_target_`` is ignored)."""
        kwargs = _fields_of(cls, as_plain_dict(cfg), "net config")
        return cls(
            kwargs["embed_dim"],
            VisionConfig.from_dict(kwargs["vision"]),
            TextConfig.from_dict(kwargs["text"]),
        )

    @classmethod
    def of(cls, net: CLIP) -> NetConfig:
        """The architecture of a built net, read from its modules."""
        trunk, text, tc = net.visual.trunk, net.text, net.text.config
        vision = VisionConfig(
            image_size=net.visual.image_size,
            patch_size=trunk.patch_embed.patch_size[0],
            width=trunk.embed_dim,
            layers=len(trunk.blocks),
            heads=trunk.blocks[0].attn.num_heads,
            act=net.visual.act,
            mlp_ratio=mlp_ratio_for(trunk.blocks[0].mlp.fc1.out_features, trunk.embed_dim),
        )
        txt = TextConfig(
            context_length=text.context_length,
            width=tc.hidden_size,
            layers=tc.num_hidden_layers,
            heads=tc.num_attention_heads,
            act=text.act,
            vocab_size=text.vocab_size,
            mlp_ratio=mlp_ratio_for(tc.intermediate_size, tc.hidden_size),
        )
        return cls(net.embed_dim, vision, txt)

    def to_dict(self) -> dict[str, Any]:
        """The canonical plain form: CLIP keyword arguments, defaults configs usually omit left out."""
        return {"embed_dim": self.embed_dim, "vision": self.vision.to_dict(), "text": self.text.to_dict()}

    def describe(self) -> str:
        """One line for error messages."""
        v, t = self.vision, self.text
        return (
            f"[ViT {v.width}w x {v.layers}, patch {v.patch_size}, {v.image_size} px; "
            f"text {t.width}w x {t.layers}, context {t.context_length}; embed {self.embed_dim}; {v.act}]"
        )


# --------------------------------------------------------------------------------------------------
# The registry: one architecture per file in configs/model/net/


def architectures() -> list[str]:
    """The names `net_config` knows: one per file in configs/model/net/."""
    return sorted(p.stem for p in (config_dir() / "model" / "net").glob("*.yaml"))


def _load(path: Path) -> Any:
    cfg = OmegaConf.load(path)
    bases = [d for d in cfg.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*(_load(path.parent / f"{b}.yaml") for b in bases), cfg) if bases else cfg


def net_config(name: str) -> dict[str, Any]:
    """The `net` arguments of `configs/model/net/<name>.yaml` (embed_dim, vision, text), checked."""
    path = config_dir() / "model" / "net" / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no architecture {name!r}; known: {architectures()}")
    return NetConfig.from_dict(_load(path)).to_dict()
