"""`tolclip build-shards [overrides]` (Hydra; configs/build/) and `tolclip check-shards DIR`.

build-shards turns image collections into training shards, with a catalog and reports
(`tolclip.curate.build`); check-shards decodes every sample of a shard folder and compares the shards
with the folder's catalog.csv, exiting non-zero when anything is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from tolclip.core.resources import CONFIG_PATH
from tolclip.curate.build import build
from tolclip.curate.check import check
from tolclip.curate.config import BuildError

# The statistics printed after a build (stats.json has them all).
SUMMARY_KEYS = (
    "inputs",
    "images",
    "skipped",
    "not_selected",
    "excluded",
    "fraction_all_seven_ranks",
    "fraction_complete_to_lowest_rank",
    "fraction_all_seven_ranks_of_species_labels",
    "shard_sets",
)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="build/default")
def main(cfg: DictConfig) -> None:
    try:
        build_cfg = OmegaConf.to_container(cfg.build, resolve=True)
        stats = build(build_cfg)
    except (BuildError, OSError, ValueError) as err:
        # A bad config or input (or a full / read-only disk) is the user's to fix: one line, no traceback.
        print(f"tolclip build-shards: error: {err}", file=sys.stderr)
        sys.exit(2)
    summary = {k: stats[k] for k in SUMMARY_KEYS}
    print(json.dumps(summary, indent=1))
    print(f"wrote {build_cfg['out_dir']}")
    if (cfg.get("wandb") or {}).get("enabled"):
        # Imported only when asked for: the evaluation package imports torch, which a build never needs.
        from tolclip.evaluation.wandb_runs import log_job, scalars

        log_job(
            cfg.get("wandb"),
            "build-shards",
            cfg.paths.output_dir,
            str(cfg.task_name),
            lambda: scalars(summary),
        )


def check_main(argv: list[str] | None = None) -> int:
    """`tolclip check-shards DIR`: print each problem, then a summary; 0 all good, 1 problems, 2 usage."""
    parser = argparse.ArgumentParser(
        prog="tolclip check-shards",
        description="tolclip check-shards: decode every sample of a shard folder (as `tolclip build-shards` "
        "writes it) and compare the shards with its catalog.csv; exits 1 when anything is wrong.",
    )
    parser.add_argument("directory", help="the build's out_dir (or any folder of shard-*.tar files)")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # argparse exits 2 on bad usage, 0 after --help
        return int(exit_.code or 0)
    problems = check(args.directory)
    for p in problems:
        print(p)
    print(
        f"{len(problems)} problem(s) in {args.directory}" if problems else f"{args.directory}: all shards OK"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    main()
