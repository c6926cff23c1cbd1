"""`tolclip train [overrides]`: train a model (Hydra app; config `train.yaml`).

The default trains the tiny CLIP on the synthetic tree of life and prints zero-shot accuracy at
every rank when training ends.
"""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from tolclip.cli import run_folder  # noqa: F401 - registers ${run_id:} for hydra.run.dir (python -m runs)
from tolclip.core.resources import CONFIG_PATH
from tolclip.training.run import optimized_value, train


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("WANDB_SILENT", "true")
    out = train(cfg)
    # The value a hyperparameter search (hparams_search=optuna) optimises; None without one.
    return optimized_value(out, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
