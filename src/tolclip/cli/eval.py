"""Evaluation entry point: `tolclip eval ckpt_path=...` (Hydra; configs/eval.yaml).

Loads the CLIP net from a training checkpoint and prints zero-shot accuracy at every rank on the
data config's evaluation sets, as the end of training does; results also go to a CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from tolclip.cli import run_folder  # noqa: F401 - registers ${run_id:} for hydra.run.dir (python -m runs)
from tolclip.core.resources import CONFIG_PATH
from tolclip.core.templates import templates_for
from tolclip.evaluation.wandb_runs import log_job, rank_results_media
from tolclip.evaluation.zero_shot import RankResult, evaluate_datamodule, print_results, write_csv
from tolclip.models.checkpoints import load_net, run_net_config
from tolclip.training.run import check_checkpoint_file, check_data, instantiate_datamodule


def evaluate(cfg: DictConfig) -> list[RankResult]:
    ckpt_path = Path(cfg.ckpt_path)
    check_checkpoint_file(str(ckpt_path))  # a typo, a text file or a truncated copy: one clear line
    net_cfg = run_net_config(ckpt_path, cfg.model.net)
    net = load_net(ckpt_path, net_cfg)  # an unreadable archive or wrong architecture fails here, named
    # Images must match the architecture the checkpoint has, whatever model group was given.
    cfg.data.image_size = net_cfg.vision.image_size
    datamodule = instantiate_datamodule(cfg)
    datamodule.prepare_data()
    check_data(datamodule, train=False)  # every eval set, named by its key, before any feature is computed
    zs = cfg.zero_shot
    results = evaluate_datamodule(
        net, datamodule, list(zs.text_types), templates_for(zs.templates), context_length=zs.context_length
    )
    print_results(results)
    if zs.output_csv:
        write_csv(results, Path(cfg.paths.output_dir) / zs.output_csv, checkpoint=str(ckpt_path))
    log_job(
        cfg.get("wandb"),
        "eval",
        cfg.paths.output_dir,
        str(cfg.task_name),
        lambda: rank_results_media(results),
        {"checkpoint": str(ckpt_path)},
    )
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> Any:
    evaluate(cfg)


if __name__ == "__main__":
    main()
