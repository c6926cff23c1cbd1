"""Cutting sample lists into shards and writing each shard, whole or not at all, from the spool."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tolclip.data.shards import TarShard

ShardJob = tuple[str, str, list[tuple[int, int]]]  # final path, encoded.bin, (offset, length) per sample


def plan_shards(keys: list[str], sizes: dict[str, int], max_count: int, max_bytes: int) -> list[list[str]]:
    """Cut an ordered key list into shards of <= max_count samples and about <= max_bytes."""
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for key in keys:
        if current and (len(current) >= max_count or size + sizes[key] > max_bytes):
            shards.append(current)
            current, size = [], 0
        current.append(key)
        size += sizes[key]
    if current:
        shards.append(current)
    return shards


def write_one_shard(blobs: list[bytes], final: Path) -> None:
    """Write one complete shard to a temporary name and rename it (an interrupted write leaves no shard)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".tmp-") as tmp:
        shard = TarShard(Path(tmp) / final.name)
        for blob in blobs:
            shard.write_blob(blob)
        shard.close()
        os.replace(shard.path, final)


def _write_shard_job(job: ShardJob) -> tuple[str, int]:
    """Write one planned shard from the spool (runs in a worker): (path, samples written)."""
    final, blobs_path, members = job
    with open(blobs_path, "rb") as fh:
        blobs = []
        for offset, length in members:
            fh.seek(offset)
            blobs.append(fh.read(length))
    write_one_shard(blobs, Path(final))
    return final, len(members)


def write_shards(jobs: list[ShardJob], pool: Any) -> Iterator[tuple[str, int]]:
    """Write the shards (in the pool, when there is one); yields (path, samples) as each is complete."""
    if pool is None or len(jobs) < 2:
        yield from map(_write_shard_job, jobs)
        return
    # Shards are independent files; each is recorded in progress.json as soon as it is complete.
    yield from pool.imap_unordered(_write_shard_job, jobs)
