"""The partitioned near-duplicate index decides exactly as the driver's `Deduplicator`, whatever the number
of partitions and the chunking, and spreads its entries over the partitions."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tolclip.curate.dedup import Deduplicator
from tolclip.curate.dedup_partitioned import IndexPartition, PartitionedDeduplicator
from tolclip.curate.executor import LocalActor


class _Local(LocalActor):
    """A partition in this process, called as a Ray actor would be; counts the calls."""

    def __init__(self) -> None:
        super().__init__(IndexPartition())
        self.calls = 0

    @property
    def part(self) -> IndexPartition:
        return self.obj

    def call(self, method: str, *args: Any) -> Any:
        self.calls += 1
        return super().call(method, *args)


def _stream(n: int, seed: int) -> list[tuple[str, str, int]]:
    """(key, sha256 hex, pHash): distinct images, byte copies, near copies (1-8 bits), a pHash twin
    with other bytes (distance 0, not exact), in a random order of kinds."""
    rng = random.Random(seed)
    out: list[tuple[str, str, int]] = []
    for i in range(n):
        kind = rng.random()
        if out and kind < 0.15:
            _, sha, h = rng.choice(out)  # a byte copy
        elif out and kind < 0.45:
            _, _, base = rng.choice(out)
            h = base
            for bit in rng.sample(range(64), rng.randint(1, 8)):
                h ^= 1 << bit
            sha = f"{rng.getrandbits(256):064x}"
        elif out and kind < 0.5:
            _, _, h = rng.choice(out)
            sha = f"{rng.getrandbits(256):064x}"
        else:
            h, sha = rng.getrandbits(64), f"{rng.getrandbits(256):064x}"
        out.append((f"k{i}", sha, h))
    return out


@pytest.mark.parametrize("partitions", [1, 3, 8])
@pytest.mark.parametrize("chunk", [1, 7, 64, None], ids=["chunk1", "chunk7", "chunk64", "unprefetched"])
def test_decisions_equal_the_driver_index(partitions: int, chunk: int | None) -> None:
    stream = _stream(1500, seed=partitions * 100 + (chunk or 0))
    reference = Deduplicator()
    expected = [reference.add_hashes(k, sha, h) for k, sha, h in stream]
    parts = [_Local() for _ in range(partitions)]
    dedup = PartitionedDeduplicator(parts)
    got = []
    step = chunk or len(stream)
    for start in range(0, len(stream), step):
        batch = stream[start : start + step]
        if chunk is not None:
            dedup.prefetch((sha, h) for _, sha, h in batch)
        got += [dedup.add_hashes(k, sha, h) for k, sha, h in batch]
    assert got == expected
    assert len(dedup) == len(reference) == sum(g is None for g in got)
    # Every kept entry is stored once per band, spread over the partitions (by band value).
    dedup.prefetch([])  # flush the last kept entries
    assert sum(len(p.part) for p in parts) == 4 * len(dedup)
    if partitions > 1:
        assert all(len(p.part) for p in parts)
    if chunk is not None:
        chunks = -(-len(stream) // step)  # plus the flush, unless nothing was kept since the last chunk
        assert {p.calls for p in parts} <= {chunks, chunks + 1} and len({p.calls for p in parts}) == 1


def test_out_of_order_use_and_unsupported_distances_are_errors() -> None:
    dedup = PartitionedDeduplicator([_Local()])
    dedup.prefetch([("ab" * 32, 5)])
    with pytest.raises(RuntimeError, match="prefetched order"):
        dedup.add_hashes("k", "cd" * 32, 6)
    with pytest.raises(ValueError, match="max_distance up to 7, not 8"):
        PartitionedDeduplicator([_Local()], max_distance=8)
    with pytest.raises(ValueError, match="at least one partition"):
        PartitionedDeduplicator([])
