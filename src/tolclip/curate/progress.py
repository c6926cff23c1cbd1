"""`out_dir/progress.json`: the config fingerprint a resume must match, and the shards already finished."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tolclip.curate.config import BuildConfig, BuildError
from tolclip.curate.splits import TRAIN_SMALL
from tolclip.curate.spool import CACHE_DIR

PROGRESS_FILE = "progress.json"


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def prepare_out_dir(cfg: BuildConfig) -> None:
    """Check that a resume continues the same config; clear an earlier build's output for a fresh one."""
    out = cfg.out_dir
    progress = out / PROGRESS_FILE
    if cfg.resume:
        if progress.exists() and _read(progress).get("fingerprint") != cfg.fingerprint():
            raise BuildError(
                f"resume=true but the config changed since the build in {out} started; "
                "rerun without resume (starts over)"
            )
        return
    if out.exists() and any(out.iterdir()):
        if not progress.exists():
            raise BuildError(f"out_dir {out} is not empty and holds no tolclip build; choose an empty folder")
        # A fresh build over an earlier one: remove what a build writes, nothing else.
        old = _read(progress).get("shards", {})
        for name in {*cfg.splits, TRAIN_SMALL, CACHE_DIR, *(rel.split("/")[0] for rel in old)}:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


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

    def is_finished(self, rel: str, count: int) -> bool:
        """Whether the shard `rel` (relative to out_dir) was written whole, with `count` samples."""
        return self.state["shards"].get(rel) == count and (self.out / rel).exists()

    def shard_written(self, path: str, count: int) -> None:
        self.state["shards"][Path(path).relative_to(self.out).as_posix()] = count
        self._save()

    def complete(self) -> None:
        self.state["complete"] = True
        self._save()
