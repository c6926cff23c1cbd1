"""Sample keys and splits, both from hashes: the same input gets the same key and split in every build."""

from __future__ import annotations

import re
from functools import lru_cache

from tolclip.core.hashing import sha256_hex

TRAIN_SMALL = "train_small"


def make_key(source: str, source_id: str) -> str:
    """`{source}_{16 hex of sha256(source_id)}`: stable, and free of '.' and '/' (webdataset keys)."""
    return f"{_safe_source(source)}_{sha256_hex(source_id)[:16]}"


@lru_cache(maxsize=1024)
def _safe_source(source: str) -> str:
    # A build has a few sources and calls this once per input.
    return re.sub(r"[^A-Za-z0-9_-]+", "-", source).strip("-") or "source"


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) from the text's sha256."""
    return int(sha256_hex(text)[:12], 16) / float(1 << 48)


def assign_split(key: str, splits: dict[str, float]) -> str:
    """Split by the key's hash: splits are percentages in config order (e.g. train 95, val 5)."""
    total = sum(splits.values())
    point = _unit_hash(f"split:{key}") * total
    acc = 0.0
    for name, pct in splits.items():
        acc += pct
        if point < acc:
            return name
    return list(splits)[-1]


def in_train_small(key: str, fraction: float) -> bool:
    """A second, independent hash marks the `train_small` subset of train."""
    return _unit_hash(f"small:{key}") < fraction


def split_of(key: str, splits: dict[str, float], held_out: str | None) -> str:
    """The split of one kept sample: `held_out` (the holdout split, for a held-out species) or by hash."""
    return held_out if held_out else assign_split(key, splits)
