"""`${run_id:<time format>[,<runs folder>]}`: one run folder per job, shared by its ranks and kept
when the scheduler requeues the job.

Hydra's `${now:...}` alone gives two runs started in the same second (job arrays, sweeps, two
shells) one folder, and every rank of a cluster job its own. The name stays sortable by time and
gains a job part:

- `TOLCLIP_RUN_ID` set: that, verbatim (a custom launcher names the run for all its processes);
- under SLURM: the job's start time (`SLURM_JOB_START_TIME`; left out when SLURM does not give it,
  so ranks can never disagree) and `j<job>[_<array task>]` [`s<step>`], the same in every task. A
  requeued job (`SLURM_RESTART_COUNT` > 0) starts again with a new start time but the same job
  id: it reuses the folder of that job found in `<runs folder>`, so it finds its checkpoints;
- under torchrun: rank 0 draws the name (now and the rendezvous id `TORCHELASTIC_RUN_ID`, or 6
  random hex digits when there is none: `--rdzv-id` not given, the id is "none") and shares it
  through the elastic agent's store (`MASTER_ADDR:MASTER_PORT`); the other ranks, started seconds
  apart, wait for it at most `STORE_TIMEOUT_S`, then stop with an error that says what to set;
- otherwise: now and 6 random hex digits.

Lightning's own DDP launch needs no id: it gives its child processes the resolved
`hydra.run.dir` as an override. The value is cached per process (like `${now:}`), so every
resolution within one run (Hydra's, Lightning's) gives the same folder; `fresh()` starts a new run.
It is also cached in the config (OmegaConf's resolver cache, as for `${now:}`): a sweep that
hydra-submitit-launcher pickles to SLURM jobs keeps the sweep folder its launcher resolved.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

DEFAULT_FORMAT = "%Y-%m-%d_%H-%M-%S"
STORE_KEY = "tolclip/run_id"
STORE_TIMEOUT_S = 300.0  # rank 0 may still be importing; bounded so a lost rank 0 cannot hang the job
_cache: dict[tuple[str, str], str] = {}


def _clean(text: str) -> str:
    """Folder-name safe: ids come from the environment."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)


def _job_part(env: dict[str, str]) -> tuple[float | None, str]:
    """(job-wide start time if the launcher gives one, job id part) or (None, "") without a launcher."""
    if env.get("SLURM_JOB_ID"):
        job = env["SLURM_JOB_ID"]
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        step = env.get("SLURM_STEP_ID", "")
        part = f"j{job}" + (f"s{step}" if step.isdigit() else "")
        start = env.get("SLURM_JOB_START_TIME", "")
        return (float(start) if start.isdigit() else None), _clean(part)
    run = env.get("TORCHELASTIC_RUN_ID", "")
    if run and run != "none":  # torchrun's default id when none is given is the string "none"
        return None, _clean(f"r{run}")
    return None, ""


def _requeued_folder(env: dict[str, str], part: str, parent: str) -> str | None:
    """The folder an earlier start of this SLURM job made, when this start is a requeue."""
    if not parent or not env.get("SLURM_JOB_ID") or env.get("SLURM_RESTART_COUNT", "0") in ("", "0"):
        return None
    found = sorted(
        p.name
        for p in Path(parent).glob(f"*{part}")
        if p.is_dir() and (p.name == part or p.name.endswith(f"_{part}"))
    )
    return found[-1] if found else None  # the newest by time, should a job id ever come back


def _shared_by_rank0(env: dict[str, str], draw: str, timeout_s: float) -> str:
    """Under torchrun: rank 0's name, through the elastic agent's store (a worker restart reads it back)."""
    from torch.distributed import TCPStore

    rank, where = int(env.get("RANK", "0")), f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    try:
        store = TCPStore(
            env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=timeout_s)
        )
        if rank == 0:
            store.set(STORE_KEY, draw)
        return store.get(STORE_KEY).decode()  # rank 0 reads back its own: the same elastic restart
    except (RuntimeError, ValueError, OSError) as err:  # torch raises DistStoreError (a RuntimeError)
        raise RuntimeError(
            f"run folder: rank {rank} got no run name from rank 0 through torchrun's store at {where} "
            f"within {timeout_s:.0f}s ({type(err).__name__}); give torchrun --rdzv-id or set TOLCLIP_RUN_ID"
        ) from None


def _world_size(env: dict[str, str]) -> int:
    size = env.get("WORLD_SIZE", "")
    return int(size) if size.isdigit() else 1


def _agent_store(env: dict[str, str]) -> bool:
    """A torchrun worker whose elastic agent hosts a store the workers can reach."""
    return (
        env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        and bool(env.get("MASTER_ADDR"))
        and env.get("MASTER_PORT", "").isdigit()
    )


def make_run_id(
    fmt: str = DEFAULT_FORMAT,
    env: dict[str, str] | None = None,
    now: float | None = None,
    parent: str = "",
    timeout_s: float = STORE_TIMEOUT_S,
) -> str:
    """A run folder name (not cached): `<time>_<job or random part>`; `parent` is the runs folder a
    requeued SLURM job looks in for its earlier folder."""
    env = dict(os.environ if env is None else env)
    if env.get("TOLCLIP_RUN_ID"):
        return _clean(env["TOLCLIP_RUN_ID"])
    start, part = _job_part(env)
    if env.get("SLURM_JOB_ID"):
        if found := _requeued_folder(env, part, parent):
            return found
        if start is None:
            return part  # no job-wide start time: "now" would differ between ranks
    stamp = time.strftime(fmt or DEFAULT_FORMAT, time.localtime(start or (now or time.time())))
    name = f"{stamp}_{part or secrets.token_hex(3)}"
    if env.get("SLURM_JOB_ID") or _world_size(env) <= 1:
        return name
    if _agent_store(env):  # torchrun: ranks start seconds apart, so rank 0's name is the run's
        return _shared_by_rank0(env, name, timeout_s)
    return part or name  # a rendezvous id alone, without a time the ranks might not agree on


def run_id(fmt: str = DEFAULT_FORMAT, parent: str = "") -> str:
    """The resolver: one name per process, format and runs folder until `fresh()`."""
    key = (fmt, str(parent))
    if key not in _cache:
        _cache[key] = make_run_id(fmt, parent=str(parent))
    return _cache[key]


def fresh() -> None:
    """Forget the cached name: the next resolution names a new run (one process, several runs)."""
    _cache.clear()


class SweepFolderEarly(Callback):
    """A Hydra callback (configs/hydra/default.yaml): a multirun's launcher may resolve the sweep
    folder while it is built (hydra-submitit-launcher does, for its log folder), before Hydra sets
    the `${hydra:...}` values the folder's path uses (paths.root_dir); set them first."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)


def register() -> None:
    OmegaConf.register_new_resolver("run_id", run_id, replace=True, use_cache=True)


register()  # importing this module is enough: every Hydra command imports it before Hydra composes
