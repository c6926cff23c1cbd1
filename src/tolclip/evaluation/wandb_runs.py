"""wandb runs of the commands that are not Lightning fits: eval-suite jobs, `tolclip eval`, `tolclip report
--suite --wandb`, build-shards (job types eval-suite, eval, eval-suite, build-shards).

Each command's config has a `wandb:` block (`enabled`, `offline`, `project`, `name`, `group`; name and
group null = derived as for training, core/run_names.py). A job's run is offline by default and lives in
its run folder (`wandb/offline-run-*`); `wandb_run.json` there records its project, name and group, so
that `tolclip report` puts the sweep's table in the same group. Logging never fails the command: the
results are on disk already, so a wandb error is a warning.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tolclip.core.run_names import RunNames, hydra_run_names, sweep_group
from tolclip.core.taxonomy import RANKS
from tolclip.evaluation.zero_shot import RESULT_COLUMNS, RankResult, rank_metrics, result_row

log = logging.getLogger(__name__)
RUN_FILE = "wandb_run.json"


def init_run(
    names: RunNames, out_dir: str | Path, project: str = "tolclip", offline: bool = True, config: Any = None
) -> Any:
    """A wandb run in `out_dir` (offline unless `offline=False`, which follows WANDB_MODE / the login),
    recorded in `out_dir/wandb_run.json`."""
    import wandb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        name=names.name,
        group=names.group,
        job_type=names.job_type,
        dir=str(out),
        mode="offline" if offline else os.environ.get("WANDB_MODE"),
        config=dict(config or {}),
        reinit="finish_previous",  # jobs of a multirun share one process
    )
    record = {"project": project, "name": names.name, "group": names.group, "id": run.id}
    (out / RUN_FILE).write_text(json.dumps(record | {"job_type": names.job_type}, indent=1))
    return run


def start_run(
    settings: Mapping[str, Any] | None, job_type: str, out_dir: str | Path, task_name: str, config: Any = None
) -> Any | None:
    """The run of a Hydra command's job when its `wandb.enabled` is set; None otherwise. `settings`: the
    command's `wandb:` block as it is (a DictConfig reads as a mapping, interpolations resolved)."""
    settings = dict(settings or {})
    if not settings.get("enabled"):
        return None
    names = hydra_run_names(job_type, task_name, settings.get("name"), settings.get("group"))
    return init_run(
        names, out_dir, settings.get("project") or "tolclip", bool(settings.get("offline", True)), config
    )


def scalars(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of a nested result (results.json), keyed by its path: `few_shot/1_shot/mean`."""
    out: dict[str, float] = {}
    for key, value in result.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= scalars(value, f"{path}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def csv_table(path: Path) -> Any:
    """A CSV file as a wandb.Table (numbers as numbers, empty cells as None)."""
    import wandb

    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    return wandb.Table(columns=header, data=[[_cell(c) for c in row] for row in body])


def _cell(text: str) -> Any:
    if text == "":
        return None
    try:
        return float(text) if any(ch in text for ch in ".eE") else int(text)
    except ValueError:
        return text


def silhouette_figure(silhouette: Mapping[str, float | None], title: str) -> Any:
    """Silhouette score per rank as a bar chart (PIL image): the tree's shape in one picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranks = [r for r in RANKS if silhouette.get(r) is not None]
    fig = Figure(figsize=(6, 3.2), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(ranks, [silhouette[r] for r in ranks], color="tab:green")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel("silhouette (cosine)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=30)
    return figure_image(fig)


def figure_image(fig: Any) -> Any:
    """A matplotlib figure as a PIL image (what wandb.Image and log_image take), laid out tight."""
    from PIL import Image

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return Image.open(buffer).convert("RGB")


def _suite_media(result: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Per-class zero-shot table, the 2-D maps and the silhouette-by-rank chart, when the job has them."""
    import wandb

    media: dict[str, Any] = {}
    if (out_dir / "per_class.csv").is_file():
        media["zero_shot/per_class"] = csv_table(out_dir / "per_class.csv")
    maps = sorted((out_dir / "plots").glob("*.png"))
    if maps:
        media["intrinsic/maps"] = [wandb.Image(str(p), caption=p.stem) for p in maps]
    silhouette = (result.get("intrinsic") or {}).get("silhouette") or {}
    if any(v is not None for v in silhouette.values()):
        title = f"{result.get('model')} on {result.get('task')}"
        media["intrinsic/silhouette_by_rank"] = wandb.Image(silhouette_figure(silhouette, title))
    return media


def log_job(
    settings: Mapping[str, Any] | None,
    job_type: str,
    out_dir: str | Path,
    task_name: str,
    media: Callable[[], Mapping[str, Any]],
    config: Any = None,
) -> bool:
    """One job's run, when its `wandb.enabled` is set: `media()` (numbers, tables, images) logged once.
    True when logged; a wandb error is a warning (the job's results are on disk already)."""
    try:
        run = start_run(settings, job_type, out_dir, task_name, config)
        if run is None:
            return False
        run.log(dict(media()))
        run.finish()
        return True
    except Exception as err:
        log.warning("wandb: could not log the %s run (%s)", job_type, err)
        return False


def log_suite_result(
    settings: Mapping[str, Any] | None, result: Mapping[str, Any], out_dir: str | Path, task_name: str
) -> bool:
    """One eval-suite job (job type eval-suite): its numbers, per-class table and plots."""
    config = {k: result.get(k) for k in ("model", "model_kind", "task", "label_type", "images", "classes")}
    return log_job(
        settings,
        "eval-suite",
        out_dir,
        task_name,
        lambda: scalars(result) | _suite_media(result, Path(out_dir)),
        config,
    )


def rank_results_media(results: Sequence[RankResult]) -> dict[str, Any]:
    """Zero-shot results at every rank: `zeroshot/{text type}/{set}/{rank}/top1|top5` and one table."""
    import wandb

    table = wandb.Table(columns=RESULT_COLUMNS, data=[result_row(r) for r in results])
    return rank_metrics(results, "zeroshot") | {"zeroshot/table": table}


def report_names(sweep_dir: str | Path, job_runs: Sequence[Path] = ()) -> tuple[str, RunNames]:
    """(project, names) of a sweep's report run: the group its jobs logged to (their wandb_run.json),
    else the one the sweep's folder gives."""
    records = [json.loads(p.read_text()) for p in job_runs or sorted(Path(sweep_dir).glob(f"*/{RUN_FILE}"))]
    group = next((r["group"] for r in records if r.get("group")), None) or sweep_group(sweep_dir)
    project = next((r["project"] for r in records if r.get("project")), "tolclip")
    return project, RunNames(name=f"{group}: table", group=group, job_type="eval-suite")
