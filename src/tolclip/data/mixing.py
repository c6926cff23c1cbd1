"""Training sources mixed by weight: the shape of `data.train_shards` and its checks.

`data.train_shards` is one shard set (a brace pattern, glob, `::`-joined string or a list) or a
mapping of named sources, each `{shards: ..., weight: ...}` (or just its shards, weight 1):

    train_shards:
      inat21: {shards: /data/inat21/shard-{000000..000099}.tar, weight: 0.6}
      bioscan: {shards: /data/bioscan/shard-*.tar, weight: 0.3}

Each training sample is drawn from a source with probability weight / sum of weights (per sample,
so sources whose shards hold different numbers of samples still mix by weight).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KEY = "data.train_shards"
SOURCE_KEYS = ("shards", "weight")


@dataclass(frozen=True)
class Source:
    """One named shard set and its sampling weight; `name` is "" for an unweighted shard set."""

    name: str
    shards: str | tuple[str, ...]
    weight: float = 1.0

    @property
    def key(self) -> str:
        """The config key that names this source in errors (`data.train_shards.inat21`)."""
        return f"{KEY}.{self.name}" if self.name else KEY


def is_weighted(spec: object) -> bool:
    """True when `spec` names sources with weights (a mapping) rather than one shard set."""
    return isinstance(spec, Mapping)


def _shards(key: str, value: object) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{key}.shards is empty: give a shard pattern or a list of shards")
        return value
    if isinstance(value, Sequence) and all(isinstance(v, str) and v.strip() for v in value):
        if not value:
            raise ValueError(f"{key}.shards is an empty list: give a shard pattern or a list of shards")
        return tuple(value)
    raise ValueError(f"{key}.shards must be a shard pattern or a list of them, got {value!r}")


def _weight(key: str, value: object) -> float:
    # bool is an int in Python, but `weight: true` is a typo, not a weight.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key}.weight must be a non-negative number, got {value!r}")
    return float(value)


def _source(name: object, value: object) -> Source:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{KEY}: source names must be non-empty strings, got {name!r}")
    key = f"{KEY}.{name}"
    if not isinstance(value, Mapping):
        return Source(name, _shards(key, value))
    unknown = sorted(str(k) for k in value if k not in SOURCE_KEYS)
    if unknown:
        raise ValueError(f"{key}: unknown key(s) {unknown}; a source has {list(SOURCE_KEYS)}")
    if "shards" not in value:
        raise ValueError(f"{key}: no shards (give {key}.shards=PATTERN)")
    return Source(name, _shards(key, value["shards"]), _weight(key, value.get("weight", 1.0)))


def require_resampled(resampled: bool) -> None:
    """Weights are proportions of an endless draw: a finite pass over each source cannot follow them."""
    if not resampled:
        raise ValueError(
            f"{KEY} mixes sources by weight, which needs data.resampled=true "
            "(a finite pass over each source would not follow the weights)"
        )


def train_sources(spec: str | Sequence[str] | Mapping[str, object]) -> list[Source]:
    """The sources of `data.train_shards`, checked: one unnamed source for a plain shard set."""
    if not is_weighted(spec):
        return [Source("", spec if isinstance(spec, str) else tuple(spec))]
    assert isinstance(spec, Mapping)
    if not spec:
        raise ValueError(f"{KEY} is an empty mapping: name at least one source")
    sources = [_source(name, value) for name, value in spec.items()]
    if sum(s.weight for s in sources) <= 0:
        raise ValueError(f"{KEY}: the weights of {[s.name for s in sources]} sum to 0; one must be positive")
    return sources


__all__ = ["Source", "is_weighted", "require_resampled", "train_sources"]
