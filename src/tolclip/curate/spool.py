"""The spool: the image stage's results, kept on disk as they complete so a resumed build skips them.

`cache/processed.jsonl` holds one result per line (key, hashes, size, status; never the bytes) and
`cache/encoded.bin` the samples' tar members, appended. A result line gives its sample's offset and
length in `encoded.bin`, which is all the shard stage needs to copy a sample into a shard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CACHE_DIR = "cache"
RESULTS_FILE = "processed.jsonl"
BLOBS_FILE = "encoded.bin"
# What the spool holds; part of the resume fingerprint, so a spool written in another layout
# (format 1 spooled bare JPEGs) is never mixed into a new build.
SPOOL_FORMAT = 2


class Spool:
    """`processed.jsonl` (one result per line, without the bytes) + `encoded.bin` (each sample's tar
    members, appended). `done` maps each key already processed to its result line."""

    # Flushing per image cost as much as hashing it; a crash loses at most this many results.
    FLUSH_EVERY = 64

    def __init__(self, cache: Path) -> None:
        cache.mkdir(parents=True, exist_ok=True)
        self.results = cache / RESULTS_FILE
        self.blobs = cache / BLOBS_FILE
        self.done: dict[str, dict[str, Any]] = {}
        if self.results.exists():
            self._load()
        self._pending: list[str] = []

    def _load(self) -> None:
        size = self.blobs.stat().st_size if self.blobs.exists() else 0
        for line in self.results.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line being written when the build stopped
                continue
            if row.get("ok") and row["offset"] + row["length"] > size:
                continue
            self.done[row["key"]] = row

    def __enter__(self) -> Spool:
        self._results = self.results.open("a", encoding="utf-8")
        self._blobs = self.blobs.open("ab")
        self._end = self._blobs.seek(0, os.SEEK_END)
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self._results.close()
        self._blobs.close()

    def add(self, result: dict[str, Any]) -> None:
        row = dict(result)
        if row.get("ok"):
            blob = row.pop("blob")
            row["offset"], row["length"] = self._end, len(blob)
            self._blobs.write(blob)
            self._end += len(blob)
        self._pending.append(json.dumps(row))
        self.done[row["key"]] = row
        if len(self._pending) >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Blobs first, then their lines: a result line never points past the end of `encoded.bin`."""
        self._blobs.flush()
        if self._pending:
            self._results.write("\n".join(self._pending) + "\n")
            self._pending.clear()
        self._results.flush()

    def span(self, key: str) -> tuple[int, int]:
        """(offset, length) of a processed sample's tar members in `encoded.bin`."""
        row = self.done[key]
        return row["offset"], row["length"]
