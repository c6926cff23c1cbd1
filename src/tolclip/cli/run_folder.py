"""`${run_id:<time format>}`: a run folder name that is unique per job and shared by its ranks.

Hydra's `${now:...}` alone gives two runs started in the same second (job arrays, sweeps, two
shells) one folder. The name stays sortable by time and gains a job part:

- `TOLCLIP_RUN_ID` set: that, verbatim (a custom launcher names the run for all its processes);
- under SLURM: the job's start time (`SLURM_JOB_START_TIME`, else now) and `j<job>[_<array task>]`
  [`s<step>`], the same in every task of the job;
- under torchrun: now and the rendezvous id (`TORCHELASTIC_RUN_ID`);
- otherwise: now and 6 random hex digits.

Lightning's own DDP launch needs no id: it gives its child processes the resolved
`hydra.run.dir` as an override. The value is cached per process (like `${now:}`), so every
resolution within one run (Hydra's, Lightning's) gives the same folder; `fresh()` starts a new run.
"""

from __future__ import annotations

import os
import secrets
import time

from omegaconf import OmegaConf

DEFAULT_FORMAT = "%Y-%m-%d_%H-%M-%S"
_cache: dict[str, str] = {}


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


def make_run_id(
    fmt: str = DEFAULT_FORMAT, env: dict[str, str] | None = None, now: float | None = None
) -> str:
    """A new run folder name (not cached): `<time>_<job or random part>`."""
    env = dict(os.environ if env is None else env)
    if env.get("TOLCLIP_RUN_ID"):
        return _clean(env["TOLCLIP_RUN_ID"])
    start, part = _job_part(env)
    stamp = time.strftime(fmt or DEFAULT_FORMAT, time.localtime(start or (now or time.time())))
    return f"{stamp}_{part or secrets.token_hex(3)}"


def run_id(fmt: str = DEFAULT_FORMAT) -> str:
    """The resolver: one name per process and format until `fresh()`."""
    if fmt not in _cache:
        _cache[fmt] = make_run_id(fmt)
    return _cache[fmt]


def fresh() -> None:
    """Forget the cached name: the next resolution names a new run (one process, several runs)."""
    _cache.clear()


def register() -> None:
    OmegaConf.register_new_resolver("run_id", run_id, replace=True)


register()  # importing this module is enough: every Hydra command imports it before Hydra composes
