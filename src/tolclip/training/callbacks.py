"""Training callbacks: evaluation when training ends (and every N steps)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from tolclip.core.captions import check_text_type
from tolclip.core.taxonomy import RANKS
from tolclip.core.templates import templates_for
from tolclip.evaluation.classifier import evaluate_classifier
from tolclip.evaluation.zero_shot import (
    RankResult,
    evaluate_datamodule,
    print_results,
    rank_metrics,
    results_table,
    write_csv,
)
from tolclip.training.dashboard import log_zero_shot_table

log = logging.getLogger(__name__)


class SkippedSamples(Callback):
    """Training samples the loader skipped as unreadable: summed over ranks each epoch, kept across
    resumes (in the checkpoint), logged as `train/skipped_samples`."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0  # all ranks, whole run

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The loader workers of this epoch have finished, so the DataModule's count is final.
        here = int(getattr(trainer.datamodule, "skipped_samples", 0))
        epoch = int(pl_module.all_gather(torch.tensor(here, device=pl_module.device)).sum())
        self.total += epoch
        pl_module.log("train/skipped_samples", float(self.total), rank_zero_only=True)
        if epoch:
            pl_module.print(
                f"epoch {trainer.current_epoch}: skipped {epoch} unreadable sample(s) (warnings name them)"
            )

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.total = int(state_dict.get("total", 0))


class ZeroShotEvaluation(Callback):
    """Runs `evaluate_ranks` on the DataModule's eval sets every N steps and when training ends.

    Evaluation runs on global rank 0 alone (eval sets are small next to training) while the
    other ranks wait at a barrier; metrics go to the logger as `zeroshot/{set}/{rank}/top1`.
    """

    def __init__(
        self,
        text_types: Sequence[str] = ("taxon",),
        templates: str = "openai",
        every_n_steps: int = 0,
        step_templates: str = "single",
        ranks: Sequence[str] = RANKS,
        output_csv: str | None = "zero_shot.csv",
        context_length: int = 77,
    ):
        super().__init__()
        self.text_types = tuple(check_text_type(t, allow_mixed=False) for t in text_types)
        self.templates = templates_for(templates)
        self.step_templates = templates_for(step_templates)
        self.every_n_steps = every_n_steps
        self.ranks = tuple(ranks)
        self.output_csv = output_csv
        self.context_length = context_length
        self.results: list[RankResult] = []
        # With model.accum_freq=K one global step spans K loader batches: evaluate each step once.
        self._last_eval_step = -1

    def run(self, trainer, pl_module, templates: Sequence[str], prefix: str) -> list[RankResult]:
        dm = trainer.datamodule
        results: list[RankResult] = []
        if trainer.is_global_zero and dm.eval_sets:
            results = evaluate_datamodule(
                pl_module.net, dm, self.text_types, templates, self.ranks, self.context_length
            )
            metrics = rank_metrics(results, prefix)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        trainer.strategy.barrier()
        return results

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_eval_step:
            self._last_eval_step = step
            self.run(trainer, pl_module, self.step_templates, "val_zeroshot")

    def on_train_end(self, trainer, pl_module) -> None:
        self.results = self.run(trainer, pl_module, self.templates, "zeroshot")
        if trainer.is_global_zero and self.results:
            print_results(self.results)
            train_type = getattr(trainer.datamodule, "text_type", "")
            if self.output_csv:
                path = write_csv(
                    self.results, Path(trainer.default_root_dir) / self.output_csv, train_text_type=train_type
                )
                log.info("zero-shot results written to %s", path)
            log_zero_shot_table(trainer, self.results, train_type)


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

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if trainer.is_global_zero and dm.eval_sets:
            loaders = {name: dm.eval_dataloader(name) for name in dm.eval_sets}
            self.results = evaluate_classifier(pl_module.net, pl_module.species_classes, loaders, self.ranks)
            metrics = rank_metrics(self.results, "classifier", by_text_type=False)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            log_zero_shot_table(trainer, self.results, "", key="classifier/table")
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
