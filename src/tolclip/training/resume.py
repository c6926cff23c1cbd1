"""Continuing a run after a requeue: its newest checkpoint, and the same wandb run.

A requeued SLURM job comes back as a new process in the same run folder (cli/run_folder.py). It
resumes from the newest checkpoint that folder holds: Lightning's `hpc_ckpt_<n>.ckpt`, written to
`trainer.default_root_dir` (the run folder) when the requeue signal arrives, or ModelCheckpoint's
`checkpoints/*.ckpt`. Lightning itself only picks `hpc_ckpt_*` when fit gets no path under SLURM;
`train` always hands it the path chosen here, so the two never disagree.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import zipfile
from pathlib import Path
from typing import Any

from tolclip.core.run_names import hydra_run_names

log = logging.getLogger(__name__)

HPC_PATTERN = re.compile(r"hpc_ckpt_(\d+)\.ckpt")
WANDB_ID_FILE = "wandb_id.txt"


def _candidates(run_dir: Path) -> list[Path]:
    """Every checkpoint file of the run (links such as last.ckpt resolved, each file once)."""
    files = [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if HPC_PATTERN.fullmatch(p.name)]
    files += list((run_dir / "checkpoints").glob("*.ckpt"))
    unique = {p.resolve() for p in files if p.exists()}  # a dangling last.ckpt link does not count
    return [p for p in unique if p.is_file()]


def _newest_first(paths: list[Path]) -> list[Path]:
    """By write time; on a tie, Lightning's hpc counter, then the name (step_000123 sorts by step)."""

    def key(p: Path) -> tuple[int, int, str]:
        hpc = HPC_PATTERN.fullmatch(p.name)
        return p.stat().st_mtime_ns, int(hpc.group(1)) if hpc else -1, p.name

    return sorted(paths, key=key, reverse=True)


def newest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in a run folder, or None. A checkpoint cut short by the job's
    end (not a whole zip archive) is passed over, with a warning, for the one before it."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return None
    for path in _newest_first(_candidates(folder)):
        if zipfile.is_zipfile(path):
            return path
        log.warning("resume: %s is not a complete checkpoint (cut short?); trying an older one", path)
    return None


def resume_path(ckpt_path: str | None, run_dir: str | os.PathLike) -> str | None:
    """`ckpt_path` as the user gave it -> the file to resume from (None: start fresh).

    "auto": the run folder's newest checkpoint, or a fresh start when there is none. "last": the
    same, but an error when there is none. A path: that file, unless the run folder already has
    checkpoints of its own, i.e. this is the same run started again (a requeue): those are newer.
    """
    found = newest_checkpoint(run_dir)
    if ckpt_path in ("auto", "last"):
        if found is None and ckpt_path == "last":
            raise FileNotFoundError(
                f"ckpt_path=last but the run folder {run_dir} has no checkpoint "
                "(hpc_ckpt_*.ckpt or checkpoints/*.ckpt); use ckpt_path=auto to start fresh"
            )
        if found is not None:
            log.info("resume: continuing from %s", found)
        return str(found) if found else None
    if ckpt_path and found is not None:
        log.warning(
            "resume: %s already has checkpoints, so this run was started before: "
            "continuing from %s rather than ckpt_path=%s",
            run_dir,
            found,
            ckpt_path,
        )
        return str(found)
    return ckpt_path or None


def wandb_run_id(run_dir: str | os.PathLike) -> str:
    """The wandb run id of this run folder: drawn on the first start, read back after a requeue.

    Written whole, then linked into place: when ranks race, the first link wins and every rank
    reads that id, never a half-written file."""
    path = Path(run_dir) / WANDB_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        draft = path.with_name(f".{WANDB_ID_FILE}.{os.getpid()}.{secrets.token_hex(2)}")
        draft.write_text(secrets.token_hex(4))  # 8 characters of [0-9a-f], as wandb's own ids
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another rank (or start) was first: its id is the run's
        finally:
            draft.unlink()
    run_id = path.read_text().strip()
    if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", run_id):
        raise ValueError(f"logger.wandb: {path} holds {run_id!r}, not a wandb run id; delete the file")
    return run_id


def wandb_logger(
    save_dir: str,
    id: str | None = None,
    resume: str = "allow",
    name: str | None = None,
    group: str | None = None,
    job_type: str = "train",
    task_name: str = "train",
    **kwargs: Any,
) -> Any:
    """Lightning's WandbLogger continuing the run folder's wandb run (configs/logger/wandb.yaml).

    `id` given: that run. Else the id kept in the run folder, so a requeued job logs to the same
    run (with `resume="allow"`, a new id starts a new run). `name`/`group` None: derived from the
    Hydra job (core/run_names.py: the overrides a sweep varies, one group per sweep)."""
    from lightning.pytorch.loggers import WandbLogger

    names = hydra_run_names(job_type, task_name, name, group)
    return WandbLogger(
        save_dir=save_dir,
        id=id or wandb_run_id(save_dir),
        resume=resume,
        name=names.name,
        group=names.group,
        job_type=names.job_type,
        **kwargs,
    )
