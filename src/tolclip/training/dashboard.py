"""What a training run shows on its wandb dashboard besides the scalars every logger gets: the zero-shot
results as a table, and a grid of training images with their captions at the start of training.

Every function here is a no-op unless the trainer has a wandb logger (csv, tensorboard and no logger
cost nothing), and logs from global rank 0 only.
"""

from __future__ import annotations

import logging
import math
import re
import textwrap
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from tolclip.core.constants import CLIP_MEAN, CLIP_STD
from tolclip.core.tokenizer import get_tokenizer
from tolclip.evaluation.wandb_runs import figure_image
from tolclip.evaluation.zero_shot import RESULT_COLUMNS, RankResult, result_row

log = logging.getLogger(__name__)

ZERO_SHOT_COLUMNS = ["train_text_type", *RESULT_COLUMNS]


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    """The trainer's wandb loggers on global rank 0; none elsewhere."""
    if not trainer.is_global_zero:
        return []
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def log_zero_shot_table(
    trainer: L.Trainer, results: Sequence[RankResult], train_text_type: str, key: str = "zeroshot/table"
) -> None:
    """The end-of-training results, one row per text type, eval set and rank (`zeroshot/table`; the
    supervised baseline's: `classifier/table`, text type "classifier")."""
    rows = [[train_text_type, *result_row(r)] for r in results]
    for logger in wandb_loggers(trainer):
        logger.log_table(key, columns=ZERO_SHOT_COLUMNS, data=rows, step=trainer.global_step)


def finish_wandb(trainer: L.Trainer, failed: bool = False) -> None:
    """End the run's wandb runs: jobs of a multirun share one process, and Lightning's WandbLogger would
    otherwise hand the next job this job's run."""
    for logger in wandb_loggers(trainer):
        if logger._experiment is None:
            continue
        try:
            logger._experiment.finish(exit_code=1 if failed else 0)
        except Exception as err:  # never hide the error that ended the run behind wandb's
            log.warning("wandb: could not finish the run (%s)", err)
        logger._experiment = None


def caption_grid(images: torch.Tensor, captions: Sequence[str], columns: int = 4) -> Image.Image:
    """Images ([N, 3, H, W], values in [0, 1]) in a grid, each with its caption above it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, math.ceil(len(images) / columns))
    fig = Figure(figsize=(3 * columns, 3.4 * rows), dpi=80)
    FigureCanvasAgg(fig)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(textwrap.fill(caption, 36), fontsize=7)
        ax.axis("off")
    return figure_image(fig)


def batch_captions(batch: dict, text_types: Sequence[str], n: int) -> list[str]:
    """The first `n` captions of a training batch, decoded from its tokens ([B, L], or [B, types, L] for
    `mixed`: image i shows text type i mod types, so the grid shows every kind); species targets
    (the supervised baseline) show the species."""
    text = batch.get("text")
    if isinstance(text, torch.Tensor):
        tokenizer = get_tokenizer(text.shape[-1])

        def decode(tokens: torch.Tensor) -> str:
            # BPE ends every word with a space: "corax ." reads as the caption did, "corax."
            return re.sub(r" ([.,;:!?])", r"\1", tokenizer.decode(tokens))

        if text.dim() == 2:
            return [decode(text[i]) for i in range(n)]
        types = text.shape[1]
        names = list(text_types) if len(text_types) == types else [str(t) for t in range(types)]
        return [f"{names[i % types]}: {decode(text[i, i % types])}" for i in range(n)]
    if "species" in batch:
        return [" ".join(map(str, batch["species"][i])) for i in range(n)]
    return [str(k) for k in batch.get("key", [""] * n)[:n]]


class TrainingSamples(Callback):
    """The first training batch's first `max_images` images with their captions, once per run, as one
    wandb image (`train/samples`): what the model actually reads, after augmentation and tokenizing."""

    def __init__(self, max_images: int = 16):
        super().__init__()
        self.max_images = max_images
        self._logged = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, _: int
    ) -> None:
        if self._logged:  # checked first: this runs before every training batch
            return
        loggers = wandb_loggers(trainer)
        if not loggers or not isinstance(batch, dict) or "image" not in batch:
            return
        self._logged = True
        images = batch["image"][: self.max_images].detach().float().cpu()
        # Undo the loader's normalisation (CLIP's statistics, the DataModule's default) for display.
        mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
        images = (images * std + mean).clamp(0, 1)
        text_types = getattr(trainer.datamodule, "text_types", ()) if trainer.datamodule else ()
        captions = batch_captions(batch, text_types, len(images))
        grid = caption_grid(images, captions)
        for logger in loggers:
            caption = (
                f"{len(captions)} training images at step {trainer.global_step}, as the model reads them"
            )
            logger.log_image("train/samples", [grid], step=trainer.global_step, caption=[caption])
