"""Evaluation entry point: `tolclip-eval ckpt_path=...` (Hydra; configs/eval.yaml).

Loads the CLIP net from a training checkpoint and prints zero-shot accuracy at every rank on the
data config's evaluation sets, as the end of training does; results also go to a CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from tolclip.train import CONFIG_DIR, instantiate_datamodule
from tolclip.zero_shot import RankResult, evaluate_datamodule, print_results, templates_for, write_csv


def run_net_config(ckpt_path: Path, fallback: DictConfig) -> DictConfig:
    """The `model.net` config the checkpoint was trained with, when its run directory has one."""
    saved = ckpt_path.resolve().parents[1] / ".hydra" / "config.yaml"
    if saved.exists():
        return OmegaConf.load(saved).model.net
    return fallback


def load_net(ckpt_path: str | Path, net_cfg: DictConfig) -> torch.nn.Module:
    """Build the net from config and load the weights of a Lightning checkpoint into it."""
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # weights_only: a checkpoint is data, and must not be able to run code when loaded.
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net = hydra.utils.instantiate(net_cfg, _convert_="all")
    hint = "pass the model=... it was trained with"
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exn:  # same names, other shapes
        raise ValueError(f"{path} does not match the model config ({hint}):\n{exn}") from None
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the model config: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); {hint}"
        )
    return net.eval()


def evaluate(cfg: DictConfig) -> list[RankResult]:
    ckpt_path = Path(cfg.ckpt_path)
    net_cfg = run_net_config(ckpt_path, cfg.model.net)
    net = load_net(ckpt_path, net_cfg)  # a missing file fails here, with its path
    # Images must match the architecture the checkpoint has, whatever model group was given.
    cfg.data.image_size = net_cfg.vision.image_size
    datamodule = instantiate_datamodule(cfg)
    zs = cfg.zero_shot
    results = evaluate_datamodule(
        net, datamodule, list(zs.text_types), templates_for(zs.templates), context_length=zs.context_length
    )
    print_results(results)
    if zs.output_csv:
        write_csv(results, Path(cfg.paths.output_dir) / zs.output_csv, checkpoint=str(ckpt_path))
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> Any:
    evaluate(cfg)


if __name__ == "__main__":
    main()
