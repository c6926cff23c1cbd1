"""Classifiers with pybioclip's names: Tree-of-Life prediction for any model, custom labels, binned labels.

Probabilities are ``softmax(exp(logit_scale) * image @ classes.T)`` over the index's classes. A rank above
species sums the species probabilities within each lineage at that rank, in one ``index_add`` per batch
(pybioclip loops over species in Python); as pybioclip, species at or below ``min_prob`` are left out of
those sums. Every input gives rows: its top ``k`` names, or one row whose ``error`` says why it could not
be read. Rows are plain dicts (``pandas.DataFrame(rows)`` makes a table).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tolclip.core.taxonomy import RANKS, Taxon, lineage
from tolclip.data.images import ImageInput
from tolclip.evaluation.metrics import group_index, sum_into_groups
from tolclip.models.loading import LoadedModel, load_path, pick_device
from tolclip.prediction.encode import ImageEmbeddings, embed_images
from tolclip.prediction.index import (
    LabelIndex,
    cached_index,
    default_cache_dir,
    load_index,
    model_fingerprint,
)
from tolclip.prediction.model_taxa import model_taxa_source
from tolclip.prediction.taxa import Taxa, read_taxa, subset_mask

# Probabilities computed at a time, bounding memory for large indexes (450k species x 100 images).
PROB_CHUNK = 50_000_000
TOL_COLUMNS = (
    "file_name",
    "rank",
    *RANKS[:-1],
    "species_epithet",
    "species",
    "common_name",
    "score",
    "error",
)
LABEL_COLUMNS = ("file_name", "classification", "score", "error")


def error_row(columns: Sequence[str], file_name: str, reason: str) -> dict[str, Any]:
    """The row of an input that could not be read: its name and why, every other column empty."""
    return {**dict.fromkeys(columns, ""), "file_name": file_name, "score": None, "error": reason}


def parse_ranks(rank: str | Sequence[str]) -> list[str]:
    """``"genus"``, ``"genus,species"``, ``["family", "genus"]`` or ``"all"`` -> ranks, coarse to fine."""
    names = rank.split(",") if isinstance(rank, str) else list(rank)
    names = [n.strip().lower() for n in names if n.strip()]
    if names == ["all"]:
        return list(RANKS)
    unknown = [n for n in names if n not in RANKS]
    if unknown or not names:
        raise ValueError(
            f"unknown rank {', '.join(unknown) or '(none)'}; choose from {', '.join(RANKS)} or all"
        )
    return sorted(set(names), key=RANKS.index)


class _Base:
    """A loaded model on a device, and the scoring every classifier shares."""

    def __init__(
        self,
        model: str | os.PathLike | LoadedModel,
        *,
        device: str = "auto",
        quick_gelu: bool | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | os.PathLike | None = "default",
        templates: str | Sequence[str] = "openai",
        progress: bool | None = False,
        precision: str = "fp32",
    ) -> None:
        self.precision = precision
        self.model = model if isinstance(model, LoadedModel) else load_path(model, quick_gelu)
        self.device = pick_device(device)
        self.model.net.to(self.device).eval()
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.cache_dir = default_cache_dir() if cache_dir == "default" else cache_dir
        self.templates = templates
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def embed(
        self, images: Sequence[ImageInput] | ImageInput, batch_size: int | None = None
    ) -> ImageEmbeddings:
        items = [images] if isinstance(images, str | os.PathLike | bytes | Image.Image) else images
        return embed_images(
            self.model,
            list(items),
            batch_size=batch_size or self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            progress=self.progress,
            precision=self.precision,
        )

    @torch.no_grad()
    def _chunks(self, feats: torch.Tensor, index: LabelIndex):
        """Probabilities [n, C] for consecutive chunks of images, bounded by PROB_CHUNK."""
        weights = index.embeddings.to(self.device)
        scale = self.model.net.logit_scale.detach().exp().to(self.device)
        step = max(1, PROB_CHUNK // max(1, len(index)))
        for start in range(0, feats.shape[0], step):
            logits = scale * feats[start : start + step].to(self.device) @ weights.T
            yield start, torch.softmax(logits.float(), dim=-1).cpu()

    def _assemble(
        self, emb: ImageEmbeddings, rows_of: Mapping[int, list[dict]], columns: Sequence[str]
    ) -> list[dict]:
        """Rows in input order: each image's predictions, or its failure row."""
        failed = {pos: error_row(columns, emb.keys[pos], reason) for pos, reason in emb.failures.items()}
        out: list[dict] = []
        for pos in range(len(emb.keys)):
            out += [failed[pos]] if pos in failed else rows_of.get(pos, [])
        return out


class TreeOfLifeClassifier(_Base):
    """Names organisms from a Tree-of-Life index of the model's (or given) taxa, at any rank.

    The index comes from ``index`` (a folder from ``tolclip index build``), else from ``taxa`` (a catalog,
    CSV, synthetic taxa.json, a ``Taxa`` or a list of ``Taxon``), else from the taxa the model was trained
    on (a tolclip run's data, or a taxa file shipped in a release folder). It is built once per model and
    taxa and cached. ``subset`` keeps the classes under some taxa (see ``taxa.subset_mask``).
    """

    def __init__(
        self,
        model: str | os.PathLike | LoadedModel,
        *,
        taxa: str | os.PathLike | Taxa | Sequence[Taxon] | None = None,
        index: str | os.PathLike | LabelIndex | None = None,
        text_type: str = "taxon_com",
        subset: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.index = self._index(taxa, index, text_type)
        if self.index.taxa is None:
            raise ValueError(f"{self.index.path}: a labels index, not a Tree-of-Life (taxa) index")
        if subset:
            self.index = self.index.select(subset_mask(self.index.taxa, subset))
        self._groups: dict[str, tuple[list[tuple[str, ...]], torch.Tensor]] = {}

    def _index(self, taxa: Any, index: Any, text_type: str) -> LabelIndex:
        if isinstance(index, LabelIndex):
            return index
        if index is not None:
            return load_index(index, self.fingerprint)
        if taxa is None:
            taxa = model_taxa_source(self.model)
        if isinstance(taxa, str | os.PathLike):
            taxa = read_taxa(taxa)
        found = taxa if isinstance(taxa, Taxa) else Taxa(list(taxa), "given")
        return cached_index(
            self.model,
            found.taxa,
            self.cache_dir,
            text_type=text_type,
            templates=self.templates,
            source=found.source,
            model_fp=self.fingerprint,
        )

    def _group(self, rank: str) -> tuple[list[tuple[str, ...]], torch.Tensor]:
        if rank not in self._groups:
            keys, group = group_index([lineage(t, rank) for t in self.index.taxa])
            self._groups[rank] = (list(keys), group)
        return self._groups[rank]

    def _rank_top(
        self, probs: torch.Tensor, rank: str, k: int, min_prob: float
    ) -> tuple[list, torch.Tensor, torch.Tensor]:
        """Per image: the top-k (values, indices) at ``rank``, and what an index means (taxa or lineages)."""
        if rank == RANKS[-1]:
            top = probs.topk(min(k, probs.shape[1]), dim=1)
            return self.index.taxa, top.values, top.indices
        keys, group = self._group(rank)
        kept = probs.where(probs > min_prob, torch.zeros((), dtype=probs.dtype))
        summed = sum_into_groups(kept, group, len(keys))
        top = summed.topk(min(k, len(keys)), dim=1)
        return [Taxon(*key, *([""] * (len(RANKS) - len(key)))) for key in keys], top.values, top.indices

    @staticmethod
    def _row(key: str, rank: str, taxon: Taxon, score: float) -> dict[str, Any]:
        cut = taxon if rank == RANKS[-1] else taxon.truncate(rank)
        species = rank == RANKS[-1]
        return {
            "file_name": key,
            "rank": rank,
            **{r: cut.rank(r) for r in RANKS[:-1]},
            "species_epithet": cut.species if species else "",
            "species": f"{cut.genus} {cut.species}".strip() if species and cut.species else "",
            "common_name": cut.common if species else "",
            "score": score,
            "error": "",
        }

    def predict(
        self,
        images: Sequence[ImageInput] | ImageInput,
        rank: str | Sequence[str] = "species",
        k: int = 5,
        min_prob: float = 1e-9,
        batch_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """Top-``k`` names per image at each rank (``"species"``, ``"genus,species"``, ``"all"``)."""
        ranks = parse_ranks(rank)
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        emb = self.embed(images, batch_size)
        rows_of: dict[int, list[dict]] = {}
        for start, probs in self._chunks(emb.features, self.index):
            for r in ranks:
                named, values, indices = self._rank_top(probs, r, k, min_prob)
                for i in range(probs.shape[0]):
                    pos = emb.ok[start + i]
                    rows_of.setdefault(pos, []).extend(
                        self._row(emb.keys[pos], r, named[j], float(v))
                        for v, j in zip(values[i].tolist(), indices[i].tolist(), strict=True)
                    )
        return self._assemble(emb, rows_of, TOL_COLUMNS)


class CustomLabelsClassifier(_Base):
    """Chooses among the user's own labels (any text), each embedded in every template once and cached."""

    def __init__(self, model: str | os.PathLike | LoadedModel, cls_ary: Sequence[str], **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.classes = [str(c).strip() for c in cls_ary if str(c).strip()]
        if len(self.classes) < 2:
            raise ValueError(f"custom labels need at least two labels, got {self.classes}")
        self.index = cached_index(
            self.model,
            self.classes,
            self.cache_dir,
            templates=self.templates,
            source="labels",
            model_fp=self.fingerprint,
        )

    def _top(self, probs: torch.Tensor, k: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        top = probs.topk(k, dim=1)
        return self.classes, top.values, top.indices

    def predict(
        self, images: Sequence[ImageInput] | ImageInput, k: int | None = None, batch_size: int | None = None
    ) -> list[dict[str, Any]]:
        """The top-``k`` labels per image (all of them when ``k`` is None or more than there are)."""
        emb = self.embed(images, batch_size)
        rows_of: dict[int, list[dict]] = {}
        for start, probs in self._chunks(emb.features, self.index):
            names, values, indices = self._top(probs, min(k or probs.shape[1], probs.shape[1]))
            for i in range(probs.shape[0]):
                pos = emb.ok[start + i]
                rows_of[pos] = [
                    {"file_name": emb.keys[pos], "classification": names[j], "score": float(v), "error": ""}
                    for v, j in zip(values[i].tolist(), indices[i].tolist(), strict=True)
                ]
        return self._assemble(emb, rows_of, LABEL_COLUMNS)


class CustomLabelsBinningClassifier(CustomLabelsClassifier):
    """Custom labels whose probabilities are summed into bins (``{label: bin}``); the top bins are returned."""

    def __init__(
        self, model: str | os.PathLike | LoadedModel, cls_to_bin: Mapping[str, str], **kwargs: Any
    ) -> None:
        bins = {str(c).strip(): str(b).strip() if b is not None else "" for c, b in cls_to_bin.items()}
        empty = [c for c, b in bins.items() if not b or b.lower() == "nan"]
        if empty:
            raise ValueError(f"labels without a bin: {', '.join(empty[:5])}")
        super().__init__(model, list(bins), **kwargs)
        keys, self._group = group_index([bins[c] for c in self.classes])
        self.bins = list(keys)

    def _top(self, probs: torch.Tensor, k: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        summed = sum_into_groups(probs, self._group, len(self.bins))
        top = summed.topk(min(k, len(self.bins)), dim=1)
        return self.bins, top.values, top.indices


def read_bins(path: str | os.PathLike) -> dict[str, str]:
    """A bins CSV (pybioclip's): first column the label, second its bin; a header row is expected."""
    import csv

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"bins file {p} does not exist")
    with p.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2 or any(len(r) < 2 for r in rows[1:] if r):
        raise ValueError(f"{p}: a bins CSV has a header and two columns (label, bin) on every row")
    return {r[0]: r[1] for r in rows[1:] if r}
