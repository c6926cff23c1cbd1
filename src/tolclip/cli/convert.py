"""`tolclip convert`: show what a model file holds (`check`), or write it as an open_clip release folder
(`export`) that `open_clip.create_model_and_transforms("local-dir:PATH")` and pybioclip load."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tolclip.models.config import as_plain_dict
from tolclip.models.export import export_open_clip
from tolclip.models.loading import LoadedModel, load_model
from tolclip.models.weights import BIN_FILE

PROG = "tolclip convert"


def _guess_kind(path: Path) -> str:
    return "tolclip" if path.suffix == ".ckpt" else "open_clip"


def _read_net_config(path: str) -> dict[str, Any]:
    """A net config from a YAML file: a model config (``net:``), a run config (``model.net``) or the net itself."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"net config {p} does not exist")
    cfg = OmegaConf.load(p)
    if "model" in cfg and "net" in cfg.model:
        cfg = cfg.model.net
    elif "net" in cfg:
        cfg = cfg.net
    return as_plain_dict(cfg)


def _load(args: argparse.Namespace) -> LoadedModel:
    spec: dict[str, Any] = {"kind": args.kind or _guess_kind(Path(args.source)), "path": args.source}
    if args.quick_gelu is not None:
        spec["quick_gelu"] = args.quick_gelu
    if args.net_config:
        spec["net_config"] = _read_net_config(args.net_config)
    return load_model(spec)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert between tolclip checkpoints and open_clip model folders."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write an open_clip model folder (local-dir:) from a checkpoint")
    export.add_argument("source", help="our Lightning .ckpt, or open_clip weights (a file or release folder)")
    export.add_argument("out_dir")
    export.add_argument("--bin", action="store_true", help=f"also write {BIN_FILE}")
    export.add_argument(
        "--force",
        action="store_true",
        help="export into a non-empty folder, replacing an earlier export's files there (others are kept)",
    )
    check = sub.add_parser("check", help="load a model file and print its architecture")
    check.add_argument("source")
    for p in (export, check):
        p.add_argument(
            "--kind", choices=("tolclip", "open_clip"), help="default: tolclip for .ckpt, else open_clip"
        )
        p.add_argument(
            "--net-config", help="YAML with the net config (tolclip checkpoints outside their run)"
        )
        p.add_argument(
            "--quick-gelu",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="activation of a bare state dict",
        )
    return parser


def _report(loaded: LoadedModel) -> str:
    report = {
        "name": loaded.name,
        "source": loaded.source,
        "net_config": loaded.net_config,
        "parameters": sum(p.numel() for p in loaded.net.parameters()),
        "preprocess": asdict(loaded.preprocess),
    }
    return json.dumps(report, indent=2)


def main(argv: list[str] | None = None) -> int:
    """Run `tolclip convert`; the exit code is 0, 2 for bad input (the error on stderr)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exn:  # argparse has printed its message
        return int(exn.code or 0)
    try:
        loaded = _load(args)
        if args.command == "export":
            out = export_open_clip(loaded, args.out_dir, write_bin=args.bin, force=args.force)
            print(f"wrote {out} (load with open_clip.create_model_and_transforms('local-dir:{out}'))")
        else:
            print(_report(loaded))
    except (ValueError, FileNotFoundError, OSError) as exn:
        print(f"{PROG}: error: {exn}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
