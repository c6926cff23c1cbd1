"""The supervised baseline BioCLIP is compared against: the CLIP image tower trained with cross-entropy
on species labels.

A label is a species' full lineage (kingdom .. species), so two species with the same epithet in
different genera are two classes. The label vocabulary is read from the training shards before
training (sorted, so the same data always gives the same classes) and saved in the checkpoint's
hyperparameters; samples without a species take no part in the loss and are counted.

`experiment=supervised` wires it up: `LabelledShardDataModule` puts taxa instead of caption tokens in
the training batches, `SupervisedLitModule` trains, and `SpeciesEvaluation` prints the classifier's
accuracy on the eval sets at every rank when training ends. `load_supervised` gives the trained
model back for evaluation (`encode_image` for few-shot and linear probes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from tolclip.clip_module import ScheduledModule
from tolclip.datamodule import ShardDataModule, ShardStream, expand_shards
from tolclip.shards import TAXON_FILE, decode_taxon
from tolclip.taxonomy import RANKS, Taxon
from tolclip.towers import ImageTower, WeightDecayRule
from tolclip.zero_shot import RankResult, lineage, results_table, write_csv

log = logging.getLogger(__name__)

SpeciesKey = tuple[str, ...]  # (kingdom, phylum, class, order, family, genus, species)


def species_key(taxon: Taxon) -> SpeciesKey | None:
    """A taxon's class label: its full lineage, or None when its species is not known."""
    return taxon.ranks if taxon.species else None


def scan_species(urls: Iterable[str]) -> list[SpeciesKey]:
    """The sorted species vocabulary of local shards, from their taxon.json members alone.

    Reads tar headers and skips over the image data, so it costs little next to one epoch. A
    damaged shard contributes what can be read before the damage, as it does in training.
    """
    found: set[SpeciesKey] = set()
    for url in urls:
        if url.startswith("pipe:") or "://" in url:
            raise ValueError(
                f"the species vocabulary is read from local shards before training; {url} is not a local file"
            )
        try:
            with tarfile.open(url, "r:") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith("." + TAXON_FILE):
                        key = species_key(decode_taxon(tar.extractfile(member).read()))
                        if key is not None:
                            found.add(key)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exn:
            log.warning("species vocabulary: %s is damaged, using what was read before it: %s", url, exn)
    return sorted(found)


class LabelledShardDataModule(ShardDataModule):
    """The shard DataModule with species labels instead of caption tokens in its training batches.

    A training batch holds `image` and `species`: each sample's `species_key` (None without a species).
    """

    def train_stream(self) -> ShardStream:
        stream = super().train_stream()
        # No text types: the stream yields each sample's taxon, as evaluation streams do, and does
        # not tokenize captions the classifier never reads. Samples without taxon.json are skipped
        # and counted like any unreadable sample.
        stream.cfg = dataclasses.replace(stream.cfg, text_types=())
        return stream

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Taxa become species keys (tuples of names) before Lightning moves the batch to the
        # device: it rebuilds every dataclass it meets, and a Taxon is frozen.
        batch = dict(batch)
        batch["species"] = [species_key(t) for t in batch.pop("taxon")]
        return batch

    def species_classes(self) -> list[SpeciesKey]:
        """The label vocabulary: every species in the training shards, sorted."""
        if self.train_shards is None:
            raise ValueError("data.train_shards is not set")
        return scan_species(expand_shards(self.train_shards))


class SpeciesClassifier(WeightDecayRule, nn.Module):
    """An `ImageTower` (as in `towers.CLIP`) with a linear species head on its pooled embedding."""

    def __init__(self, embed_dim: int, vision: Mapping[str, Any], num_classes: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        # Named `visual` as in CLIP, so weight-decay names and tower weights line up between the two.
        self.visual = ImageTower(embed_dim, **dict(vision))
        self.head = nn.Linear(embed_dim, num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` -> species logits ``[B, num_classes]``."""
        return self.head(self.visual(images))


class SupervisedLitModule(ScheduledModule):
    """Trains a `SpeciesClassifier` with cross-entropy, with the CLIP module's optimiser and schedule.

    `net` holds the tower sizes (`embed_dim`, `vision`) of the CLIP config it mirrors. Without
    `species_classes` the classes are read from the DataModule's training shards in `setup`;
    either way they end up in the hyperparameters, so a checkpoint carries its own vocabulary.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        species_classes: Sequence[Sequence[str]] | None = None,
        label_smoothing: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net: SpeciesClassifier | None = None
        self.species_classes: list[SpeciesKey] = []
        self._index: dict[SpeciesKey, int] = {}
        self.skipped_total = 0  # unreadable training samples, all ranks, whole run
        self.unlabelled_total = 0  # readable samples without a known species, all ranks, whole run
        self._unlabelled_epoch = 0  # this rank, this epoch
        if species_classes is not None:
            self._build(species_classes)

    def _build(self, species_classes: Sequence[Sequence[str]]) -> None:
        classes = [tuple(c) for c in species_classes]
        if len(classes) < 2 or any(len(c) != len(RANKS) for c in classes):
            raise ValueError(
                f"species_classes must be two or more {len(RANKS)}-rank lineages, got {classes[:3]}"
            )
        self.species_classes = classes
        self._index = {c: i for i, c in enumerate(classes)}
        # Lists, not tuples: hyperparameters stay plain data for YAML and weights_only loading.
        self.hparams.species_classes = [list(c) for c in classes]
        self.net = SpeciesClassifier(self.hparams.net["embed_dim"], self.hparams.net["vision"], len(classes))
        if self.hparams.grad_checkpointing:
            self.net.set_grad_checkpointing(True)

    def setup(self, stage: str) -> None:
        if self.net is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if not hasattr(dm, "species_classes"):
            raise TypeError(
                "the supervised model reads its classes from a tolclip.supervised.LabelledShardDataModule "
                f"(experiment=supervised sets data._target_), not {type(dm).__name__}"
            )
        classes = dm.species_classes()
        log.info("supervised: %d species classes in the training shards", len(classes))
        self._build(classes)

    def labels(self, species: Sequence[SpeciesKey | None]) -> torch.Tensor:
        """Class index per species key; -1 for none (or, after a resume on other data, an unknown one)."""
        return torch.tensor([self._index.get(k, -1) if k else -1 for k in species], dtype=torch.long)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The pooled, projected embedding the classifier reads: features for few-shot and linear probes."""
        return self.net.encode_image(images, normalize=normalize)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labels = self.labels(batch["species"]).to(self.device)
        logits = self.net(batch["image"])
        known = labels >= 0
        n = int(known.sum())
        self._unlabelled_epoch += len(labels) - n
        if n:
            loss = F.cross_entropy(logits[known], labels[known], label_smoothing=self.hparams.label_smoothing)
            top1 = (logits[known].argmax(-1) == labels[known]).float().mean()
            self.log("train/top1", top1, batch_size=n)
        else:
            # Nothing to learn from, but every parameter stays in the graph (DDP expects gradients).
            loss = logits.sum() * 0.0
        self.log("train/loss", loss, prog_bar=True, batch_size=max(n, 1))
        return loss

    def _sum_over_ranks(self, value: int) -> int:
        return int(self.all_gather(torch.tensor(value, device=self.device)).sum())

    def on_train_epoch_end(self) -> None:
        skipped = self._sum_over_ranks(self._skipped_here())
        unlabelled = self._sum_over_ranks(self._unlabelled_epoch)
        self._unlabelled_epoch = 0
        self.skipped_total += skipped
        self.unlabelled_total += unlabelled
        self.log("train/skipped_samples", float(self.skipped_total), rank_zero_only=True)
        self.log("train/unlabelled_samples", float(self.unlabelled_total), rank_zero_only=True)
        if skipped:
            self.print(
                f"epoch {self.current_epoch}: skipped {skipped} unreadable sample(s) (warnings name them)"
            )
        if unlabelled:
            self.print(
                f"epoch {self.current_epoch}: {unlabelled} sample(s) without a known species left out of the loss"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_samples"] = self.skipped_total
        checkpoint["unlabelled_samples"] = self.unlabelled_total

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = [tuple(c) for c in (checkpoint.get("hyper_parameters") or {}).get("species_classes") or []]
        if saved and saved != self.species_classes:
            # Same class count but other species would load silently and mean nonsense.
            raise ValueError(
                f"the checkpoint's {len(saved)} species classes differ from the {len(self.species_classes)} "
                "in this run's training shards: resume on the data it was trained on"
            )
        self.skipped_total = int(checkpoint.get("skipped_samples", 0))
        self.unlabelled_total = int(checkpoint.get("unlabelled_samples", 0))


def load_supervised(ckpt_path: str | os.PathLike) -> tuple[SupervisedLitModule, list[SpeciesKey]]:
    """A trained supervised model in eval mode, and its species classes (index = logit column)."""
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # weights_only: a checkpoint is data, and must not be able to run code when loaded.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exn:
        raise ValueError(f"{path} could not be read as a checkpoint: {exn}") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not hparams.get("species_classes") or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a supervised tolclip checkpoint (no species classes in its hyperparameters); "
            "CLIP checkpoints load with tolclip.eval.load_net"
        )
    module = SupervisedLitModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval(), list(module.species_classes)


@torch.no_grad()
def evaluate_classifier(
    module: SupervisedLitModule, loaders: Mapping[str, Iterable[dict]], ranks: Sequence[str] = RANKS
) -> list[RankResult]:
    """Top-1/top-5 of the species head at every rank, for each named evaluation loader.

    A rank's classes are the training species' lineages cut at that rank, scored by summing the
    softmax over their species. Images whose class at a rank is not among them (an unseen species,
    say, at the species rank) are left out there: `images` counts those that take part.
    """
    index: dict[str, dict[SpeciesKey, int]] = {r: {} for r in ranks}  # rank -> {lineage prefix: class}
    groups: dict[str, torch.Tensor] = {}  # rank -> the class index of each species
    for r in ranks:
        keys = [c[: RANKS.index(r) + 1] for c in module.species_classes]
        groups[r] = torch.tensor([index[r].setdefault(k, len(index[r])) for k in keys])
    was_training = module.training
    module.eval()
    results = []
    try:
        for name, loader in loaders.items():
            hits = {r: torch.zeros(2) for r in ranks}  # top-1, top-5 hits
            counts = dict.fromkeys(ranks, 0)
            for batch in loader:
                probs = module(batch["image"].to(module.device)).float().softmax(-1).cpu()
                for r in ranks:
                    labels = torch.tensor([index[r].get(lineage(t, r), -1) for t in batch["taxon"]])
                    rows = labels >= 0
                    if not rows.any():
                        continue
                    scores = probs[rows]
                    if r != RANKS[-1]:  # species are the classes themselves; coarser ranks sum them
                        scores = torch.zeros(len(scores), len(index[r])).index_add_(1, groups[r], scores)
                    top = scores.topk(min(5, scores.shape[1]), dim=-1).indices == labels[rows, None]
                    hits[r] += torch.stack([top[:, 0].sum(), top.any(-1).sum()]).float()
                    counts[r] += int(rows.sum())
            for r in ranks:
                if counts[r] and len(index[r]) >= 2:
                    top1, top5 = (hits[r] / counts[r]).tolist()
                    results.append(RankResult("classifier", name, r, counts[r], len(index[r]), top1, top5))
    finally:
        module.train(was_training)
    return results


class SpeciesEvaluation(Callback):
    """When training ends: the classifier's accuracy at every rank on the DataModule's eval sets.

    The supervised counterpart of `zero_shot.ZeroShotEvaluation` (which needs a text tower): same
    table and CSV columns, with `text_type` = "classifier"; metrics go to the logger as
    `classifier/{set}/{rank}/top1`.
    """

    def __init__(self, ranks: Sequence[str] = RANKS, output_csv: str | None = "classifier.csv"):
        super().__init__()
        unknown = set(ranks) - set(RANKS)
        if unknown:
            raise ValueError(f"unknown ranks {sorted(unknown)}; choose from {list(RANKS)}")
        self.ranks = tuple(ranks)
        self.output_csv = output_csv
        self.results: list[RankResult] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: SupervisedLitModule) -> None:
        dm = trainer.datamodule
        if trainer.is_global_zero and dm.eval_sets:
            loaders = {name: dm.eval_dataloader(name) for name in dm.eval_sets}
            self.results = evaluate_classifier(pl_module, loaders, self.ranks)
            metrics = {f"classifier/{r.eval_set}/{r.rank}/top1": r.top1 for r in self.results}
            metrics |= {f"classifier/{r.eval_set}/{r.rank}/top5": r.top5 for r in self.results}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            from rich.console import Console

            title = (
                f"supervised classifier accuracy ({len(pl_module.species_classes)} training species; "
                f"{pl_module.unlabelled_total} training samples without species left out)"
            )
            Console().print(results_table(self.results, title))
            if self.output_csv:
                path = write_csv(self.results, Path(trainer.default_root_dir) / self.output_csv)
                log.info("classifier results written to %s", path)
        trainer.strategy.barrier()
