"""Evaluation tasks: a labelled image set and the names its classes go by in zero-shot prompts.

A task is a Hydra config (`configs/suite/task/*.yaml`): one source spec, read by the same adapters as
the shard builder (`image_folder` + names table, `imagenet_wnids`, `inat_json`, `manifest`), and the
label text type:

* ``asis``  the label exactly as the source writes it (a folder name such as "Apple___Black_rot");
* ``com``, ``sci``, ``taxon``, ``sci_com``, ``taxon_com``: the BioCLIP text types (`captions.name`),
  from the label's taxon, which the offline taxonomy backend completes when ``resolve`` is on.

Classes are the distinct labels for ``asis`` and the distinct lineages otherwise, so two folder names
for one species (butterflies' POLYGONIA / QUESTION MARK) are one class. A class whose label yields no
name for the chosen type (no taxon at all) is named by its raw label, and counted in `unnamed`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tolclip.core.captions import TEXT_TYPES, name
from tolclip.core.hashing import fingerprint
from tolclip.core.taxonomy import Taxon
from tolclip.curate.resolve import Resolver, TaxoniqBackend
from tolclip.curate.sources import NOT_SELECTED, SourceRecord, open_source

LABEL_TYPES: tuple[str, ...] = ("asis", *TEXT_TYPES)


class TaskError(ValueError):
    """A task config that cannot be loaded (unknown source, no images, bad label type)."""


@dataclass
class Task:
    name: str
    label_type: str
    paths: list[str]  # one image file per example
    labels: list[int]  # class index per example
    classes: list[Taxon]  # per class: its (resolved) taxon, possibly partial
    raw_labels: list[str]  # per class: the source's label
    problems: list[str] = field(default_factory=list)  # files the source could not list
    unnamed: int = 0  # classes named by their raw label for want of a taxon

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise TaskError(f"task {self.name}: {len(self.paths)} paths but {len(self.labels)} labels")

    @property
    def taxa(self) -> list[Taxon]:
        """The taxon of every example (its class's)."""
        return [self.classes[i] for i in self.labels]

    def class_names(self, label_type: str | None = None) -> list[str]:
        """The prompt name of every class for a label type (the task's own by default)."""
        kind = check_label_type(label_type or self.label_type)
        if kind == "asis":
            return list(self.raw_labels)
        return [
            name(t, kind) if any(t.ranks) else raw
            for t, raw in zip(self.classes, self.raw_labels, strict=True)
        ]

    def fingerprint(self) -> str:
        """Identifies the examples and their labels (the feature cache key's task half)."""
        stamps = [
            (os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.exists(p) else None for p in self.paths
        ]
        return fingerprint(self.paths, self.labels, stamps, length=16)


def check_label_type(label_type: str) -> str:
    if label_type not in LABEL_TYPES:
        raise TaskError(f"unknown label type {label_type!r}; choose one of {', '.join(LABEL_TYPES)}")
    return label_type


def _class_key(record: SourceRecord, taxon: Taxon, label_type: str) -> tuple[str, ...]:
    if label_type == "asis" or not any(taxon.ranks):
        return ("label", record.label)
    return ("lineage", *taxon.ranks)


def _unresolved_taxon(record: SourceRecord) -> Taxon:
    # Without a backend, a binomial still gives genus and epithet; a one-word name has no known rank.
    words = record.scientific_name.split()
    binomial = {"genus": words[0], "species": " ".join(words[1:])} if len(words) >= 2 else {}
    return Taxon.clean(**{**binomial, **record.ranks, "common": record.common_name})


def load_task(cfg: Mapping[str, Any], resolver: Resolver | None = None) -> Task:
    """Build a task from its config: `name`, `source` (a builder source spec), `label_type`,
    optional `resolve` (default true), `max_per_class` (first N per class in source order)."""
    task_name = str(cfg.get("name") or "task")
    label_type = check_label_type(str(cfg.get("label_type", "asis")))
    spec = dict(cfg.get("source") or {})
    kind = spec.pop("kind", None)
    if kind is None:
        raise TaskError(f"task {task_name}: `source` needs a `kind:`")
    try:
        scan = open_source(kind, **spec)
        records = list(scan)
    except (FileNotFoundError, ValueError, TypeError) as err:
        raise TaskError(f"task {task_name}: {err}") from err
    if cfg.get("resolve", True):
        resolver = resolver or Resolver(TaxoniqBackend())
    limit = cfg.get("max_per_class")

    keys: dict[tuple[str, ...], int] = {}
    classes: list[Taxon] = []
    raw: list[str] = []
    per_class: list[int] = []
    paths: list[str] = []
    labels: list[int] = []
    for record in records:
        if resolver is not None:
            taxon = resolver.resolve(record.ranks, record.scientific_name, record.common_name).taxon
        else:
            taxon = _unresolved_taxon(record)
        key = _class_key(record, taxon, label_type)
        if key not in keys:
            keys[key] = len(classes)
            classes.append(taxon)
            raw.append(record.label)
            per_class.append(0)
        index = keys[key]
        if limit is not None and per_class[index] >= int(limit):
            continue
        per_class[index] += 1
        paths.append(str(record.path))
        labels.append(index)
    if not paths:
        raise TaskError(f"task {task_name}: the source yielded no images")
    if len(classes) < 2:
        raise TaskError(f"task {task_name}: needs at least two classes, found {len(classes)}")
    unnamed = 0 if label_type == "asis" else sum(not any(t.ranks) for t in classes)
    # Files in splits the task did not ask for are not problems, just not part of it.
    problems = [f"{p.item}: {p.reason}" for p in scan.problems if not p.reason.startswith(NOT_SELECTED)]
    return Task(task_name, label_type, paths, labels, classes, raw, problems, unnamed)


def describe(task: Task) -> str:
    extra = f", {task.unnamed} classes named by raw label" if task.unnamed else ""
    skipped = f", {len(task.problems)} files unlisted" if task.problems else ""
    return f"{task.name}: {len(task.paths)} images, {len(task.classes)} classes, {task.label_type} names{extra}{skipped}"
