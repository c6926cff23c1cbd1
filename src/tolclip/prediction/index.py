"""A label index: the class-text embeddings a model needs to name things, computed once and kept.

Two kinds: ``taxa`` (a Tree-of-Life index: one class per lineage, named in a BioCLIP text type) and
``labels`` (a user's own label list, as typed). Either is built for one model, with one text type and
template set, and saved as a folder:

    index.json       what it is: model fingerprint, text type, templates, counts, taxa fingerprint, source
    embeddings.npy   [classes, dim] float32, L2-normalised (mean over templates, renormalised, as CLIP)
    classes.parquet  the classes row for row: the seven ranks and common name, or the label

``predict`` keeps indexes in a cache keyed by model and taxa fingerprint (``index_dir``), so a model is
asked for the text embeddings of a set of taxa once. A folder that does not hold a complete index is
never trusted; a half-written one cannot exist (written beside, then renamed into place).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tolclip import __version__
from tolclip.core.captions import check_text_type, name
from tolclip.core.hashing import file_sha256, fingerprint
from tolclip.core.taxonomy import RANKS, Taxon
from tolclip.core.templates import TEMPLATE_SETS, templates_for
from tolclip.core.tokenizer import get_tokenizer
from tolclip.evaluation.zero_shot import text_classifier
from tolclip.models.loading import LoadedModel
from tolclip.models.open_clip_config import CONFIG_FILE
from tolclip.models.weights import FOLDER_WEIGHTS

FORMAT_VERSION = 1
INDEX_FILE, EMBEDDINGS_FILE, CLASSES_FILE = "index.json", "embeddings.npy", "classes.parquet"
TAXA, LABELS = "taxa", "labels"


class IndexError_(ValueError):  # noqa: N801 - `IndexError` is a builtin with another meaning
    """A folder that is not a usable index (missing files, another model's, another format)."""


@dataclass
class LabelIndex:
    embeddings: torch.Tensor  # [C, D] float32, L2-normalised
    kind: str  # TAXA or LABELS
    names: list[str]  # the prompted name of each class (taxa: in the index's text type)
    taxa: list[Taxon] | None = None  # per class, for a taxa index
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # where it was loaded from or saved to

    def __len__(self) -> int:
        return len(self.names)

    def select(self, keep: Sequence[bool]) -> LabelIndex:
        """The classes where ``keep`` is true (a subset: same embeddings, fewer rows)."""
        if len(keep) != len(self):
            raise ValueError(f"subset mask has {len(keep)} entries for {len(self)} classes")
        rows = [i for i, k in enumerate(keep) if k]
        taxa = [self.taxa[i] for i in rows] if self.taxa is not None else None
        meta = {**self.meta, "subset_of": len(self), "count": len(rows)}
        return LabelIndex(
            self.embeddings[rows], self.kind, [self.names[i] for i in rows], taxa, meta, self.path
        )


# ------------------------------------------------------------------------------------ fingerprints


def _model_files(loaded: LoadedModel) -> list[Path]:
    """The files whose bytes are the model: a release folder's config and weights (a README or taxa file
    added beside them changes nothing), or the one file."""
    source = Path(loaded.source)
    if not source.is_dir():
        return [source]
    return sorted(f for f in source.iterdir() if f.name in (CONFIG_FILE, *FOLDER_WEIGHTS) and f.is_file())


@lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file hashes anew
    return file_sha256(path)


def model_fingerprint(loaded: LoadedModel) -> str:
    """Content hash of the model's files (every file of a release folder) and its architecture."""
    hashes = []
    for f in _model_files(loaded):
        st = f.stat()
        hashes.append([f.name, _sha256_of(str(f.resolve()), st.st_size, st.st_mtime_ns)])
    return fingerprint(hashes, loaded.net_config, length=32)


def templates_key(templates: str | Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(name, templates): a named set (``openai``, ``single``) or a user's own list, named by its hash."""
    if isinstance(templates, str):
        return templates, templates_for(templates)
    found = tuple(templates)
    if not found or any("{}" not in t for t in found):
        raise ValueError("every prompt template needs one '{}' where the class name goes")
    named = next((k for k, v in TEMPLATE_SETS.items() if v == found), None)
    return named or f"custom-{fingerprint(found, length=8)}", found


# ----------------------------------------------------------------------------------------- building


def class_names(taxa: Sequence[Taxon], text_type: str) -> list[str]:
    """The name each taxon is prompted with (BioCLIP's text types; partial taxa fall back as captions do)."""
    check_text_type(text_type, allow_mixed=False)
    return [name(t, text_type) for t in taxa]


def build_index(
    model: LoadedModel,
    classes: Sequence[Taxon] | Sequence[str],
    *,
    text_type: str = "taxon_com",
    templates: str | Sequence[str] = "openai",
    batch_size: int = 512,
    progress: Callable[[int], None] | None = None,
    source: str = "",
    model_fp: str | None = None,
) -> LabelIndex:
    """Embed every class name in every template with the model's text tower (on the model's device).

    ``classes`` are taxa (a Tree-of-Life index, named in ``text_type``) or strings (labels, as typed).
    """
    if not classes:
        raise ValueError("an index needs at least one class")
    is_taxa = isinstance(classes[0], Taxon)
    names = class_names(classes, text_type) if is_taxa else [str(c).strip() for c in classes]
    if not is_taxa and len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"labels repeat: {', '.join(dupes[:5])}")
    template_name, prompts = templates_key(templates)
    context = int(model.net_config.get("text", {}).get("context_length", 77))
    start = time.perf_counter()
    emb = text_classifier(model.net, get_tokenizer(context), names, prompts, batch_size, progress).cpu()
    taxa = list(classes) if is_taxa else None
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": TAXA if is_taxa else LABELS,
        "model": {
            "fingerprint": model_fp or model_fingerprint(model),
            "name": model.name,
            "source": model.source,
        },
        "text_type": text_type if is_taxa else "asis",
        "templates": template_name,
        "template_list": list(prompts),
        "context_length": context,
        "count": len(names),
        "dim": int(emb.shape[1]),
        "classes_fingerprint": classes_fingerprint(classes),
        "source": source,
        "seconds": round(time.perf_counter() - start, 3),
        "tolclip_version": __version__,
    }
    return LabelIndex(emb.float(), meta["kind"], names, taxa, meta)


def classes_fingerprint(classes: Sequence[Taxon] | Sequence[str]) -> str:
    """Identifies a class list: taxa by their ranks and common names, labels by their text."""
    if classes and isinstance(classes[0], Taxon):
        return fingerprint([[*t.ranks, t.common] for t in classes], length=16)
    return fingerprint([[str(c).strip()] for c in classes], length=16)


# ----------------------------------------------------------------------------------- saving, loading


def _write_classes(index: LabelIndex, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[str]] = {"name": list(index.names)}
    if index.taxa is not None:
        columns.update({r: [t.rank(r) for t in index.taxa] for r in RANKS})
        columns["common_name"] = [t.common for t in index.taxa]
    pq.write_table(pa.table(columns), path)


def save_index(index: LabelIndex, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write the index folder; an existing one is replaced only with ``force`` (and only if it is an index)."""
    out = Path(out_dir)
    if out.exists():
        if not force:
            raise FileExistsError(f"{out} exists; pass --force to replace it")
        if not (out / INDEX_FILE).is_file():
            raise FileExistsError(f"{out} exists and is not an index folder; not replacing it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        np.save(tmp / EMBEDDINGS_FILE, index.embeddings.numpy().astype(np.float32))
        _write_classes(index, tmp / CLASSES_FILE)
        (tmp / INDEX_FILE).write_text(json.dumps(index.meta, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / INDEX_FILE).is_file():  # a concurrent writer that won the rename is fine
            raise
    index.path = out
    return out


def load_index(path: str | os.PathLike, model_fp: str | None = None) -> LabelIndex:
    """Read an index folder; with ``model_fp``, refuse one built by another model."""
    folder = Path(path)
    missing = [f for f in (INDEX_FILE, EMBEDDINGS_FILE, CLASSES_FILE) if not (folder / f).is_file()]
    if missing:
        raise IndexError_(f"{folder}: not a label index (missing {', '.join(missing)})")
    try:
        meta = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
        emb = torch.from_numpy(np.load(folder / EMBEDDINGS_FILE, allow_pickle=False))
        import pyarrow.parquet as pq

        table = pq.read_table(folder / CLASSES_FILE).to_pydict()
    except (OSError, ValueError) as exn:
        raise IndexError_(f"{folder}: unreadable index ({exn})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexError_(f"{folder}: index format {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    names = [str(n) for n in table.get("name", [])]
    if emb.ndim != 2 or emb.shape[0] != len(names) or len(names) != meta.get("count"):
        raise IndexError_(f"{folder}: embeddings {tuple(emb.shape)} do not match {len(names)} classes")
    built_by = meta.get("model", {}).get("fingerprint")
    if model_fp is not None and built_by != model_fp:
        raise IndexError_(f"{folder}: built for another model ({meta.get('model', {}).get('source')})")
    taxa = None
    if meta.get("kind") == TAXA:
        taxa = [
            Taxon(*(str(table[r][i]) for r in RANKS), common=str(table["common_name"][i]))
            for i in range(len(names))
        ]
    return LabelIndex(emb.float(), str(meta.get("kind")), names, taxa, meta, folder)


# ------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$TOLCLIP_CACHE``, else ``$XDG_CACHE_HOME/tolclip``, else ``~/.cache/tolclip``."""
    if os.environ.get("TOLCLIP_CACHE"):
        return Path(os.environ["TOLCLIP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tolclip"


def index_dir(
    cache_dir: str | os.PathLike, model_fp: str, classes_fp: str, text_type: str, templates: str
) -> Path:
    """Where the cache keeps the index of these classes for this model, text type and templates."""
    return Path(cache_dir) / "index" / model_fp[:16] / f"{classes_fp[:16]}-{text_type}-{templates}"


def cached_index(
    model: LoadedModel,
    classes: Sequence[Taxon] | Sequence[str],
    cache_dir: str | os.PathLike | None,
    *,
    text_type: str = "taxon_com",
    templates: str | Sequence[str] = "openai",
    source: str = "",
    progress: Callable[[int], None] | None = None,
    model_fp: str | None = None,
) -> LabelIndex:
    """The index from the cache, or built now and saved there (``cache_dir`` None: built, not saved).
    ``model_fp``: the model's fingerprint when the caller has it already."""
    model_fp = model_fp or model_fingerprint(model)
    kind_text = text_type if classes and isinstance(classes[0], Taxon) else "asis"
    folder = None
    if cache_dir is not None:
        key = classes_fingerprint(classes)
        folder = index_dir(cache_dir, model_fp, key, kind_text, templates_key(templates)[0])
        if (folder / INDEX_FILE).is_file():
            try:
                return load_index(folder, model_fp)
            except IndexError_:
                pass  # a damaged cache entry is rebuilt below
    index = build_index(
        model,
        classes,
        text_type=text_type,
        templates=templates,
        progress=progress,
        source=source,
        model_fp=model_fp,
    )
    if folder is not None:
        save_index(index, folder, force=(folder / INDEX_FILE).is_file())
    return index
