"""Architectures by name: the towers' sizes live in `configs/model/net/<name>.yaml` (configs own the
numbers); this module reads them for tools that build a bare net (benchmarks, tests, converters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tolclip.core.resources import config_dir


def architectures() -> list[str]:
    """The names `net_config` knows: one per file in configs/model/net/."""
    return sorted(p.stem for p in (config_dir() / "model" / "net").glob("*.yaml"))


def _load(path: Path) -> Any:
    cfg = OmegaConf.load(path)
    bases = [d for d in cfg.pop("defaults", []) if d != "_self_"]
    merged = OmegaConf.merge(*(_load(path.parent / f"{b}.yaml") for b in bases), cfg) if bases else cfg
    return merged


def net_config(name: str) -> dict[str, Any]:
    """The `net` arguments of `configs/model/net/<name>.yaml` (embed_dim, vision, text)."""
    path = config_dir() / "model" / "net" / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no architecture {name!r}; known: {architectures()}")
    net = OmegaConf.to_container(_load(path), resolve=True)
    net.pop("_target_", None)
    return net
