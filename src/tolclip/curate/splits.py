"""Sample keys and splits, both from hashes: the same input gets the same key and split in every build."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tolclip.core.hashing import sha256_hex
from tolclip.curate.entries import Entry

TRAIN_SMALL = "train_small"


def make_key(source: str, source_id: str) -> str:
    """`{source}_{16 hex of sha256(source_id)}`: stable, and free of '.' and '/' (webdataset keys)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", source).strip("-") or "source"
    return f"{safe}_{sha256_hex(source_id)[:16]}"


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


@dataclass
class SplitPlan:
    """The kept entries by split, and the train keys also in `train_small`."""

    by_split: dict[str, list[Entry]]
    small: set[str]
    train_small: bool  # whether train_small is a shard set of its own

    @property
    def shard_sets(self) -> dict[str, list[Entry]]:
        """Every set written as shards: the splits, then `train_small` (a copy of its train samples)."""
        sets = dict(self.by_split)
        if self.train_small:
            sets[TRAIN_SMALL] = [e for e in self.by_split["train"] if e.key in self.small]
        return sets


def split_entries(
    kept: list[Entry],
    splits: dict[str, float],
    train_small_fraction: float,
    holdout: tuple[str, set[str]] | None = None,
) -> SplitPlan:
    """Assign every kept entry to its split, in order, and mark the train_small subset.

    `holdout` is (split name, keys): those entries all go to that split, whatever their hash.
    """
    by_split: dict[str, list[Entry]] = {name: [] for name in splits}
    held_split, held_keys = holdout or ("", set())
    if held_keys:
        by_split[held_split] = []
    small: set[str] = set()
    for e in kept:
        split = held_split if e.key in held_keys else assign_split(e.key, splits)
        by_split[split].append(e)
        if split == "train" and in_train_small(e.key, train_small_fraction):
            small.add(e.key)
    return SplitPlan(by_split, small, train_small_fraction > 0 and "train" in by_split)
