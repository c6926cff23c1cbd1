"""The supervised baseline BioCLIP is compared against: the CLIP image tower trained with cross-entropy
on species labels.

A label is a species' full lineage (kingdom .. species), so two species with the same epithet in
different genera are two classes. The label vocabulary is read from the training shards before
training (sorted, so the same data always gives the same classes) and saved in the checkpoint's
hyperparameters; samples without a species take no part in the loss and are counted.

`experiment=supervised` wires it up: `data.targets=species` puts species keys instead of caption
tokens in the training batches, `SupervisedLitModule` trains a `models.classifier.SpeciesClassifier`,
and the `species_eval` callback prints the classifier's accuracy on the eval sets at every rank when
training ends. `models.checkpoints.load_classifier` gives the trained net back for evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tolclip.core.taxonomy import RANKS, SpeciesKey
from tolclip.models.classifier import SpeciesClassifier
from tolclip.training.schedule import ScheduledModule

log = logging.getLogger(__name__)


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
        if getattr(dm, "targets", None) != "species":
            raise TypeError(
                "the supervised model reads its classes from a ShardDataModule with data.targets=species "
                f"(experiment=supervised sets it), not {type(dm).__name__}"
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
        unlabelled = self._sum_over_ranks(self._unlabelled_epoch)
        self._unlabelled_epoch = 0
        self.unlabelled_total += unlabelled
        self.log("train/unlabelled_samples", float(self.unlabelled_total), rank_zero_only=True)
        if unlabelled:
            self.print(
                f"epoch {self.current_epoch}: {unlabelled} sample(s) without a known species left out of the loss"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["unlabelled_samples"] = self.unlabelled_total

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = [tuple(c) for c in (checkpoint.get("hyper_parameters") or {}).get("species_classes") or []]
        if saved and saved != self.species_classes:
            # Same class count but other species would load silently and mean nonsense.
            raise ValueError(
                f"the checkpoint's {len(saved)} species classes differ from the {len(self.species_classes)} "
                "in this run's training shards: resume on the data it was trained on"
            )
        self.unlabelled_total = int(checkpoint.get("unlabelled_samples", 0))
