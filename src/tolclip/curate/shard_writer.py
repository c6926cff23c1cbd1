"""Shards written as samples arrive: one open shard per shard set, renamed into place when complete.

A set's shards fill in order: a shard is closed before a sample that would take it past `max_count`
samples or past `max_bytes` (a shard always holds at least one sample), so which shard a sample lands
in depends only on the sizes of the samples before it: the cut is deterministic.

The open shard is `<set>/.tmp-shard-NNNNNN.tar`, the samples' tar members appended as they come; on
close the end-of-archive marker is added, the file is renamed to `shard-NNNNNN.tar` and recorded in
`progress.json`. A resumed build replays the journal through `add(..., blob=None)`: samples of a
finished shard need nothing, and the open shard's file is cut back to the bytes the journal accounts
for, then appended to again. The result equals an uninterrupted build's byte for byte.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from tolclip.curate.config import BuildConfig, BuildError
from tolclip.curate.progress import Progress, remove_temp_files
from tolclip.data.shards import tar_end

# Samples' tar members (tens of KB each) are gathered into writes of this size: one write call per
# sample cost the driver about twice as much CPU in the kernel (docs/curation-at-scale.md).
WRITE_BUFFER = 1 << 20


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


class ShardStream:
    """The shards of one set (`train`, `val`, `train_small`, ...), written in order."""

    def __init__(self, cfg: BuildConfig, name: str, progress: Progress) -> None:
        self.out, self.name, self.progress = cfg.out_dir, name, progress
        self.max_count, self.max_bytes = cfg.max_count, cfg.max_bytes
        self.index, self.count, self.size = 0, 0, 0
        self.total = 0
        self._fh: BinaryIO | None = None
        self.rel = self._rel()

    def _rel(self) -> str:
        """The current shard's path relative to out_dir (kept in `rel`: every sample asks for it)."""
        return f"{self.name}/{shard_name(self.index)}"

    def _tmp(self) -> Path:
        return self.out / self.name / f".tmp-{shard_name(self.index)}"

    def add(self, length: int, blob: bytes | None) -> str:
        """Place one sample of `length` bytes of tar members; write them unless `blob` is None (a replayed
        sample, already on disk). Returns the shard it belongs to."""
        if self.count and (self.count >= self.max_count or self.size + length > self.max_bytes):
            self._close()
        if blob is not None and not self.progress.is_finished(self.rel, None):
            if self._fh is None:
                self._open()
            assert self._fh is not None
            self._fh.write(blob)
        self.count += 1
        self.size += length
        self.total += 1
        return self.rel

    def _open(self) -> None:
        """Open the current shard's temp file for appending, cut back to the bytes already placed."""
        tmp = self._tmp()
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if self.size:
            have = tmp.stat().st_size if tmp.exists() else 0
            if have < self.size:
                raise BuildError(
                    f"cannot resume: {tmp} holds {have} bytes but the journal accounts for {self.size}; "
                    "rebuild without resume (build.overwrite=true)"
                )
            with tmp.open("r+b") as fh:
                fh.truncate(self.size)
            self._fh = tmp.open("ab", buffering=WRITE_BUFFER)
        else:
            self._fh = tmp.open("wb", buffering=WRITE_BUFFER)

    def _close(self) -> None:
        """Finish the current shard (unless a resumed build finished it before) and start the next."""
        if not self.progress.is_finished(self.rel, self.count):
            if self._fh is None:
                self._open()  # a resumed build whose shard was complete but not yet renamed
            assert self._fh is not None
            self._fh.write(tar_end(self.size))
            self._fh.close()
            os.replace(self._tmp(), self.out / self.rel)
            self.progress.shard_written(self.rel, self.count)
        elif self._fh is not None:
            self._fh.close()
        self._fh = None
        self.index, self.count, self.size = self.index + 1, 0, 0
        self.rel = self._rel()

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def finish(self) -> None:
        """Close the last shard (an empty set writes none)."""
        if self.count:
            self._close()

    def abandon(self) -> None:
        """On an error: close the temp file, keep it (a resume cuts it back and continues)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class ShardSets:
    """One `ShardStream` per set, created on first use; `flush` before the journal's lines."""

    def __init__(self, cfg: BuildConfig, progress: Progress) -> None:
        self.cfg, self.progress = cfg, progress
        self.streams: dict[str, ShardStream] = {}

    def add(self, name: str, length: int, blob: bytes | None) -> str:
        stream = self.streams.get(name)
        if stream is None:
            stream = self.streams[name] = ShardStream(self.cfg, name, self.progress)
        return stream.add(length, blob)

    def flush(self) -> None:
        for stream in self.streams.values():
            stream.flush()

    def finish(self) -> dict[str, int]:
        """Close every last shard and remove temp files an interrupted build left; returns the samples per set."""
        for stream in self.streams.values():
            stream.finish()
        for name in self.streams:
            remove_temp_files(self.cfg.out_dir / name)
        return {name: s.total for name, s in self.streams.items()}

    def abandon(self) -> None:
        for stream in self.streams.values():
            stream.abandon()
