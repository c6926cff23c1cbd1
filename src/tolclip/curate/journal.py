"""The build's two append-only logs in `out_dir/cache/`, the only state a resumed build reads back.

* `scan.jsonl`: one line per scanned input, in scan order: key, source id and a cheap signature (file
  size and mtime, the labels the source gave). A resume compares the new scan with it line by line, so
  an input removed, added or edited since the interrupted build is refused before it can mix with the
  old results.
* `processed.jsonl`: one line per image the image stage finished, in candidate order: its hashes,
  size, status and the length of its tar members. The members themselves went straight into the open
  shard of their split (`tolclip.curate.shard_writer`), which is flushed before these lines are: a
  line never names bytes that are not on disk. A resume replays these lines through the same
  decisions (dedup, split, shard cut) instead of decoding the images again.

Both are read as streams, line by line: neither is ever held in memory whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

from tolclip.core.hashing import sha256_hex
from tolclip.curate.config import BuildError
from tolclip.curate.entries import Entry

CACHE_DIR = "cache"
RESULTS_FILE = "processed.jsonl"
SCAN_FILE = "scan.jsonl"


def _complete_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(end offset, line) of every newline-terminated line: a line cut by a crash is not one."""
    offset = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            offset += len(raw)
            yield offset, raw.decode("utf-8")


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as fh:
        fh.truncate(size)


class Journal:
    """`processed.jsonl`: `replay()` the lines an interrupted build wrote, then `append` new ones."""

    FLUSH_EVERY = 64  # flushing per image cost as much as hashing it

    def __init__(self, cache: Path, resume: bool) -> None:
        cache.mkdir(parents=True, exist_ok=True)
        self.path = cache / RESULTS_FILE
        if not resume or not self.path.exists():
            self.path.write_bytes(b"")
        self._end = 0
        self._fh: TextIO | None = None
        self._pending: list[str] = []

    def replay(self) -> Iterator[dict[str, Any]]:
        """The rows already written, in order; afterwards, `append` continues after the last whole one."""
        for end, line in _complete_lines(self.path):
            self._end = end
            yield json.loads(line)

    def open(self) -> None:
        """Start appending (after `replay`): a line cut by the interruption is dropped first."""
        _truncate(self.path, self._end)
        self._fh = self.path.open("a", encoding="utf-8")

    def append(self, line: str) -> bool:
        """Queue one row (`journal_line`); True when FLUSH_EVERY rows wait (the caller flushes the shards,
        then us)."""
        self._pending.append(line)
        return len(self._pending) >= self.FLUSH_EVERY

    def flush(self) -> None:
        if self._fh is not None and self._pending:
            self._fh.write("\n".join(self._pending) + "\n")
            self._fh.flush()
        self._pending.clear()

    def close(self) -> None:
        if self._fh is not None:
            self.flush()
            self._fh.close()
            self._fh = None


def journal_line(result: dict[str, Any]) -> str:
    """An image result's journal line (everything but its tar members), made where the image was."""
    return json.dumps({k: v for k, v in result.items() if k != "blob"})


def input_signature(entry: Entry) -> str:
    """File size and mtime plus the labels the source gave (one stat: cheap), or "problem"."""
    r = entry.record
    if r is None:
        return "problem"
    try:
        st = os.stat(r.path)
        file_sig = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        file_sig = "unreadable"
    ranks = tuple(sorted(r.ranks.items()))
    return f"{file_sig}:{_labels_digest(r.label, r.scientific_name, r.common_name, ranks, r.split)}"


@lru_cache(maxsize=4096)
def _labels_digest(*labels: Any) -> str:
    # Many inputs share their labels (a species, a folder): hash each combination once.
    label, scientific, common, ranks, split = labels
    return sha256_hex(json.dumps([label, scientific, common, [list(kv) for kv in ranks], split]))[:12]


class ScanLog:
    """`scan.jsonl`: checks each scanned input against the interrupted build's scan, then records it.

    `check` raises `SourceChanged` (holding the old scan's rest) at the first input that differs; the
    caller adds the new scan's rest to name what changed. Without a previous scan it only appends.
    """

    def __init__(self, cache: Path, resume: bool) -> None:
        cache.mkdir(parents=True, exist_ok=True)
        self.path = cache / SCAN_FILE
        self._old: Iterator[tuple[int, str]] | None = None
        if resume and self.path.exists() and self.path.stat().st_size > 0:
            self._old = _complete_lines(self.path)
        else:
            self.path.write_bytes(b"")
        self._end = 0
        self._fh: TextIO | None = None if self._old is not None else self.path.open("a", encoding="utf-8")

    def check(self, entry: Entry) -> None:
        row = [entry.key, entry.source_id, input_signature(entry)]
        if self._old is not None:
            nxt = next(self._old, None)
            if nxt is not None:
                end, line = nxt
                old = json.loads(line)
                if old != row:
                    raise SourceChanged([old, *self._rest()])
                self._end = end
                return
            self._switch_to_append()
        assert self._fh is not None
        self._fh.write(json.dumps(row) + "\n")

    def finish(self) -> None:
        """At the end of the scan: inputs the old scan had beyond the new one's end were removed."""
        if self._old is not None:
            rest = self._rest()
            if rest:
                raise SourceChanged(rest)
            self._switch_to_append()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _rest(self) -> list[list[str]]:
        assert self._old is not None
        return [json.loads(line) for _, line in self._old]

    def _switch_to_append(self) -> None:
        self._old = None
        _truncate(self.path, self._end)
        self._fh = self.path.open("a", encoding="utf-8")

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class SourceChanged(Exception):
    """The scan differs from the interrupted build's; `old` holds the old scan's rows from there on."""

    def __init__(self, old: list[list[str]]) -> None:
        super().__init__("source changed")
        self.old = old


def describe_change(old: list[list[str]], new: list[list[str]]) -> str:
    """'1 input(s) missing (a.jpg), 1 new (b.jpg), 2 changed (...)' from [key, source_id, sig] rows."""
    old_by, new_by = {r[0]: r for r in old}, {r[0]: r for r in new}
    missing = [r for k, r in old_by.items() if k not in new_by]
    added = [r for k, r in new_by.items() if k not in old_by]
    changed = [r for k, r in new_by.items() if k in old_by and old_by[k][2] != r[2]]
    parts = []
    for label, rows in (("input(s) missing", missing), ("new", added), ("changed", changed)):
        if rows:
            names = sorted(r[1] for r in rows)
            parts.append(f"{len(rows)} {label} ({', '.join(names[:3])}{', ...' if len(rows) > 3 else ''})")
    return ", ".join(parts) or "the inputs come in another order"


def journal_mismatch(out: Path, expected: str, got: str) -> BuildError:
    return BuildError(
        f"the interrupted build in {out} processed {expected} where this scan has {got} (the taxonomy "
        "or the sources changed); rebuild without resume (build.overwrite=true)"
    )
