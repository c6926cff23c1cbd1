"""The build's hold on its `out_dir`: an exclusive lock, the checks before writing into it, and
`out_dir/progress.json` (the config and input fingerprints a resume must match, and the shards finished).

A build owns only the files it writes (`BUILD_FILES`, the split folders' shards, the cache): a fresh
build refuses a non-empty folder unless `overwrite=true`, and even then removes only those files.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tolclip.curate.config import BuildConfig, BuildError
from tolclip.curate.journal import CACHE_DIR, RESULTS_FILE, SCAN_FILE
from tolclip.curate.splits import TRAIN_SMALL

PROGRESS_FILE = "progress.json"
# What the cache held before the streaming builder (spool format 2); an overwrite still removes them.
LEGACY_CACHE_FILES = ("encoded.bin", "scan.json")
LOCK_FILE = ".lock"
# Top-level files a build writes (stats.write_reports, the resolver's report, progress.json).
BUILD_FILES = (
    "catalog.csv",
    "catalog.parquet",
    "skipped.csv",
    "excluded.csv",
    "stats.json",
    "resolution_report.csv",
    PROGRESS_FILE,
)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BuildError(f"{path} is unreadable ({err}); rebuild with build.overwrite=true") from err


@contextmanager
def out_dir_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on `out/.lock` while the build runs; a second build fails at once.

    Non-blocking on purpose: waiting for another build would only let it finish and then be refused
    (or worse, mixed with). The kernel drops the lock when the holder dies, so a crash never leaves it.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(out / LOCK_FILE, "a+", encoding="utf-8")  # "a+": never truncates the holder's pid
    except (FileExistsError, NotADirectoryError) as err:
        raise BuildError(f"out_dir {out} is not a folder ({err.strerror}: {err.filename})") from err
    except OSError as err:
        raise BuildError(f"out_dir {out} cannot be written ({err.strerror})") from err
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise BuildError(
                f"another build is writing {out} (lock held by pid {holder}); "
                "wait for it to end or choose another out_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_out_dir(cfg: BuildConfig) -> None:
    """Check that a resume continues the same config; refuse (or, with overwrite, clear) an occupied folder."""
    out = cfg.out_dir
    progress = out / PROGRESS_FILE
    previous = _read(progress) if progress.is_file() else None
    contents = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if cfg.resume and previous is not None:
        if previous.get("fingerprint") != cfg.fingerprint():
            raise BuildError(
                f"resume=true but the config changed since the build in {out} started; "
                "rerun without resume (starts over)"
            )
        return
    if not contents:
        return
    if not cfg.overwrite:
        held = (
            "an earlier tolclip build" if previous else f"files no tolclip build wrote, e.g. {contents[0]!r}"
        )
        hint = "build.resume=true continues an interrupted build; " if previous else ""
        raise BuildError(
            f"out_dir {out} is not empty (it holds {held}); {hint}build.overwrite=true replaces a build's "
            "files there (other files are kept), or choose an empty folder"
        )
    earlier_sets = {rel.split("/")[0] for rel in (previous or {}).get("shards", {})}
    remove_build_files(out, sorted({*cfg.splits, TRAIN_SMALL, *earlier_sets}))


def remove_build_files(out: Path, split_dirs: Sequence[str]) -> None:
    """Remove what a build writes in `out` (reports, shards, cache) and nothing else."""
    for name in BUILD_FILES:
        (out / name).unlink(missing_ok=True)
    for name in split_dirs:
        folder = out / name
        if folder.is_dir():
            for path in folder.glob("shard-*.tar"):
                path.unlink()
            remove_temp_files(folder)
            _remove_if_empty(folder)
    cache = out / CACHE_DIR
    if cache.is_dir():
        for name in (RESULTS_FILE, SCAN_FILE, *LEGACY_CACHE_FILES):
            (cache / name).unlink(missing_ok=True)
        _remove_if_empty(cache)


def remove_temp_files(folder: Path) -> None:
    """Remove the `.tmp-*` shard files (or, from older builds, folders) an interrupted build left."""
    for path in folder.glob(".tmp-*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _remove_if_empty(folder: Path) -> None:
    if not any(folder.iterdir()):
        folder.rmdir()


class Progress:
    """The build's progress.json, rewritten whenever it changes; a resume keeps the finished shards."""

    def __init__(self, cfg: BuildConfig) -> None:
        self.out = cfg.out_dir
        self.path = self.out / PROGRESS_FILE
        old = _read(self.path) if cfg.resume and self.path.exists() else {}
        self.state = {"fingerprint": cfg.fingerprint(), "shards": old.get("shards", {}), "complete": False}
        self._save()

    def _save(self) -> None:
        self.path.write_text(json.dumps(self.state, indent=1))

    def is_finished(self, rel: str, count: int | None) -> bool:
        """Whether the shard `rel` (relative to out_dir) was written whole, with `count` samples (None:
        with any count)."""
        recorded = self.state["shards"].get(rel)
        return recorded is not None and count in (None, recorded) and (self.out / rel).exists()

    def shard_written(self, rel: str, count: int) -> None:
        self.state["shards"][rel] = count
        self._save()

    def complete(self) -> None:
        self.state["complete"] = True
        self._save()
