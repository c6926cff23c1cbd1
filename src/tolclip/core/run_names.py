"""Names of a run on a dashboard (wandb): what sets it apart from the other jobs of its sweep.

A sweep `tolclip train -m data.text_type=taxon,com` gives two runs named `text_type=taxon` and
`text_type=com`, in one group named after the sweep's folder; a single run is named by its own
overrides (`tolclip train data.text_type=taxon` -> `text_type=taxon`), or by its task name when it
has none, and has no group. Each entry point sets its job type (train, eval, eval-suite,
build-shards). The pure functions take lists and paths; `hydra_run_names` reads them from Hydra's
config when a Hydra app is running, and falls back to the task name when none is (a config
composed with `compose`, a plain script).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Overrides that say where a run writes or what it logs to, not what it is: never in a name.
NOISE_KEYS = ("hydra", "logger", "paths", "callbacks.progress_bar", "tags", "task_name", "wandb")
MAX_NAME = 128  # wandb shows long names cut anyway; a path-valued override can be very long
SWEEP_FILE = "multirun.yaml"  # Hydra writes the sweep's own config (its sweep overrides) here
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"


@dataclass(frozen=True)
class RunNames:
    """What wandb.init gets as `name`, `group` and `job_type`."""

    name: str
    group: str | None
    job_type: str


def override_key(override: str) -> str:
    """The config key an override sets: `+data.generate.x=2` -> `data.generate.x`, `suite/model=a`
    -> `suite/model`, `~callbacks.progress_bar` -> `callbacks.progress_bar`."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0]  # group@package=option: the group


def _is_noise(key: str, exclude: Sequence[str]) -> bool:
    return any(key == e or key.startswith((f"{e}.", f"{e}/")) for e in exclude)


def _short_key(key: str) -> str:
    """The last part of a key: `data.text_type` -> `text_type`, `suite/model` -> `model`."""
    return re.split(r"[./]", key)[-1]


def run_name(
    overrides: Sequence[str],
    fallback: str,
    swept: Iterable[str] | None = None,
    exclude: Sequence[str] = NOISE_KEYS,
    max_len: int = MAX_NAME,
) -> str:
    """A short readable name from a job's overrides: `data.text_type=taxon` -> `text_type=taxon`.

    `swept`: the keys a sweep varies; only those name the run (the overrides every job shares say
    nothing about one job). Keys whose last part collides (`data.size`, `model.size`) stay whole.
    No override left: `fallback` (the task name)."""
    swept = None if swept is None else set(swept)
    kept = [
        o
        for o in overrides
        if not _is_noise(override_key(o), exclude) and (swept is None or override_key(o) in swept)
    ]
    shorts = [_short_key(override_key(o)) for o in kept]
    parts = []
    for override, short in zip(kept, shorts, strict=True):
        key = override_key(override) if shorts.count(short) > 1 else short
        deleted = "~" if override.startswith("~") else ""
        value = override.split("=", 1)[1] if "=" in override else ""
        parts.append(f"{deleted}{key}={value}" if "=" in override else f"{deleted}{key}")
    name = ",".join(parts) or fallback
    return name if len(name) <= max_len else name[: max_len - 1] + "…"


def swept_keys(sweep_overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None) -> set[str]:
    """The keys a sweep varies: its overrides with several values (`a=1,2`, `range(...)`, `choice(...)`)
    and the keys of `hydra.sweeper.params` (Hydra's basic sweeper and the Optuna sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = {override_key(str(k)) for k in (sweeper_params or {})}
    parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
    return keys | {override_key(o.input_line or "") for o in parsed if o.is_sweep_override()}


def sweep_group(sweep_dir: str | Path) -> str:
    """One group per sweep: its folder's name (`logs/train/multiruns/<time>_<id>` -> `train-<time>_<id>`),
    with the sweep's start time added when the name has none (`logs/sweep-text-types` is reused by
    every `make sweep-text-types`). Anything that knows the folder (`tolclip report`) finds the group."""
    folder = Path(sweep_dir)
    name = folder.name
    if folder.parent.name == "multiruns" and folder.parent.parent.name:
        name = f"{folder.parent.parent.name}-{name}"
    marker = folder / SWEEP_FILE
    if not _TIMESTAMP.search(name) and marker.exists():
        # Written once by the sweeper before the jobs start: every job reads the same time.
        name += "_" + time.strftime(_TIME_FORMAT, time.localtime(marker.stat().st_mtime))
    return name


def _hydra_config() -> Any | None:
    """Hydra's config of the running job, or None outside a Hydra app (e.g. a config from `compose`)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _sweep_dir(hydra_cfg: Any) -> Path | None:
    """The folder of the multirun this job belongs to; None for a single run."""
    from hydra.types import RunMode

    if hydra_cfg.get("mode") != RunMode.MULTIRUN:
        return None
    try:
        return Path(str(hydra_cfg.sweep.dir))
    except Exception:  # an interpolation this process cannot resolve: the job folder's parent
        return Path(str(hydra_cfg.runtime.output_dir)).parent


def _swept(sweep_dir: Path, sweeper_params: Mapping[str, Any] | None) -> set[str] | None:
    """The keys the sweep varies, from the sweep's own overrides (multirun.yaml); None when unknown."""
    from omegaconf import OmegaConf

    overrides: list[str] = []
    try:
        if (sweep_dir / SWEEP_FILE).exists():
            sweep_cfg = OmegaConf.load(sweep_dir / SWEEP_FILE)
            overrides = [str(o) for o in OmegaConf.select(sweep_cfg, "hydra.overrides.task", default=[])]
        keys = swept_keys(overrides, sweeper_params)
    except Exception:  # an unreadable file or an override the parser refuses: name by every override
        return None
    return keys or None


def hydra_run_names(
    job_type: str, task_name: str, name: str | None = None, group: str | None = None
) -> RunNames:
    """`name`/`group` as given, else derived from the running Hydra job (module doc)."""
    hydra_cfg = _hydra_config()
    if hydra_cfg is None:
        return RunNames(name or task_name, group, job_type)
    sweep_dir = _sweep_dir(hydra_cfg)
    swept = None
    if sweep_dir is not None:
        params = hydra_cfg.sweeper.get("params") if "sweeper" in hydra_cfg else None
        swept = _swept(sweep_dir, params)
    derived = run_name([str(o) for o in hydra_cfg.overrides.task], task_name, swept)
    derived_group = sweep_group(sweep_dir) if sweep_dir is not None else None
    return RunNames(name or derived, group or derived_group, job_type)
