"""`tolclip eval-suite suite/model=NAME suite/task=NAME`: one model on one benchmark task (Hydra app;
config `eval_suite.yaml`). Writes `results.json`, per-class CSV and t-SNE maps into the run folder;
`tolclip report --suite SWEEP_DIR` tables a multirun of them."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from tolclip.core.resources import CONFIG_PATH
from tolclip.evaluation.features import FeatureCache
from tolclip.evaluation.suite import evaluate, load_eval_model, summary_line
from tolclip.evaluation.tasks import describe, load_task
from tolclip.evaluation.wandb_runs import log_suite_result
from tolclip.models.loading import pick_device


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval_suite")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(int(cfg.get("seed", 0)))
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    device = pick_device(str(suite.get("device", "auto")))
    try:
        model = load_eval_model(OmegaConf.to_container(cfg.model, resolve=True), cfg.paths.log_dir, device)
        task = load_task(OmegaConf.to_container(cfg.task, resolve=True))
    except (FileNotFoundError, ValueError) as err:  # TaskError is a ValueError
        # A missing checkpoint or benchmark folder is a message, not a stack trace.
        print(f"tolclip eval-suite: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(describe(task))
    cache = FeatureCache(suite.get("cache_dir"))
    result = evaluate(model, task, suite, cache, Path(cfg.paths.output_dir))
    print(summary_line(result))
    log_suite_result(cfg.get("wandb"), result, cfg.paths.output_dir, str(cfg.get("task_name", "eval_suite")))


if __name__ == "__main__":
    main()
