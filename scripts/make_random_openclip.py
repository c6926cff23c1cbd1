"""Write an open_clip model with random weights as a released checkpoint folder (no download).

    python scripts/make_random_openclip.py OUT_DIR [--model ViT-B-16-quickgelu] [--seed 0]

The folder has what BioCLIP's release has: `open_clip_config.json` (model_cfg + preprocess_cfg)
and `open_clip_model.safetensors` in open_clip's own names, so importing it exercises the same
path as a real checkpoint. Needs open_clip_torch (a test extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import open_clip
import safetensors.torch
import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir")
    parser.add_argument("--model", default="ViT-B-16-quickgelu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out_dir)
    if (out / "open_clip_config.json").exists():
        print(f"{out} exists, kept")
        return
    torch.manual_seed(args.seed)
    model = open_clip.create_model(args.model, pretrained=None)
    model_cfg = open_clip.get_model_config(args.model)
    if model_cfg is None:
        raise SystemExit(f"unknown open_clip model {args.model!r}")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "attn_mask"}
    safetensors.torch.save_file(state, out / "open_clip_model.safetensors")
    cfg = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=1))
    print(f"wrote random {args.model} (seed {args.seed}) to {out}")


if __name__ == "__main__":
    main()
