"""Which taxa a model knows by default: those of the data it was trained on, or a file shipped with it.

A tolclip checkpoint's run folder records its data config (``.hydra/config.yaml``): the synthetic tree's
``taxa.json``, or the ``catalog.parquet`` that ``build-shards`` wrote beside the training shards. A release
folder may ship its taxa (``taxa.parquet``, ``taxa.csv``, ``catalog.parquet`` or ``taxa.json``), the way
BioCLIP's release comes with the TreeOfLife-10M names. Anything else needs ``--taxa``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tolclip.models.loading import LoadedModel
from tolclip.prediction.taxa import TaxaError

SHIPPED = ("taxa.parquet", "taxa.csv", "catalog.parquet", "taxa.json")
CATALOGS = ("catalog.parquet", "catalog.csv")
NO_TAXA = (
    "{what} names no taxa of its own: pass --taxa (a catalog.parquet from build-shards, a CSV of names or "
    "ranks, the synthetic taxa.json) or --index (a folder from `tolclip index build`), or use --cls"
)


def _run_data(run_dir: Path) -> dict[str, Any]:
    """The run's data config with the paths Hydra filled in at the time (its cwd, its output folder)."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    cwd = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd") if hydra_file.is_file() else None
    cfg.paths.root_dir = os.environ.get("TOLCLIP_ROOT") or cwd or str(run_dir)
    cfg.paths.output_dir = str(run_dir)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return data if isinstance(data, dict) else {}


def _patterns(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _patterns(v)
    elif isinstance(value, dict):
        yield from _patterns(value.get("shards", list(value.values())))


def _run_candidates(run_dir: Path) -> Iterator[Path]:
    data = _run_data(run_dir)
    generate = data.get("generate") or {}
    if generate.get("out_dir"):
        yield Path(generate["out_dir"]) / "taxa.json"
    for pattern in [*_patterns(data.get("train_shards")), *_patterns(data.get("eval_sets") or {})]:
        folder = Path(pattern.split("{")[0].split("*")[0]).parent
        for up in (folder, folder.parent):
            yield from (up / name for name in CATALOGS)


def model_taxa_source(model: LoadedModel) -> Path:
    """A file naming the taxa ``model`` was trained on (or ships with); TaxaError when there is none."""
    source = Path(model.source)
    if source.is_dir():
        found = next((source / f for f in SHIPPED if (source / f).is_file()), None)
        if found is None:
            raise TaxaError(NO_TAXA.format(what=f"the model folder {source}"))
        return found
    if source.suffix == ".ckpt" and len(source.resolve().parents) > 1:
        run_dir = source.resolve().parents[1]
        if (run_dir / ".hydra" / "config.yaml").is_file():
            try:
                found = next((p for p in _run_candidates(run_dir) if p.is_file()), None)
            except Exception as exn:  # noqa: BLE001 - a config we cannot resolve: say so, ask for --taxa
                raise TaxaError(
                    f"{run_dir}: cannot read the run's data config ({exn}); pass --taxa"
                ) from None
            if found is not None:
                return found
            raise TaxaError(
                NO_TAXA.format(what=f"the training data of {run_dir} (no taxa.json or catalog found)")
            )
    raise TaxaError(NO_TAXA.format(what=f"{source}"))
