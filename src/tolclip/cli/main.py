"""`tolclip <command> [arguments]`: one command for every stage of the flow.

Hydra commands (train, eval, eval-suite, build-shards) take Hydra overrides after the command
(`tolclip train model=vit_b16 trainer=gpu`); the others take ordinary options. `tolclip <command>
--help` says more about each. A Hydra command's user error is one line (exit code 2);
`tolclip <command> --debug ...` shows the full traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from tolclip import __version__
from tolclip.cli.errors import run_hydra_command


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"
    hydra: bool  # a Hydra app reads sys.argv itself; the others take argv and return an exit code
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command(
        "tolclip.cli.train:main",
        True,
        "train a model (default: the tiny CLIP on the synthetic tree of life, then zero-shot at every rank)",
    ),
    "eval": Command(
        "tolclip.cli.eval:main",
        True,
        "zero-shot accuracy at every rank for a training checkpoint: ckpt_path=...",
    ),
    "eval-suite": Command(
        "tolclip.cli.suite:main",
        True,
        "benchmark a model on a biology task: zero-/few-shot, rank-level, intrinsic measures",
    ),
    "build-shards": Command(
        "tolclip.cli.build:main", True, "build Tree-of-Life training shards from your image collections"
    ),
    "check-shards": Command(
        "tolclip.cli.build:check_main",
        False,
        "verify that every sample of a shard folder decodes and matches its catalog",
    ),
    "convert": Command(
        "tolclip.cli.convert:main",
        False,
        "open_clip / BioCLIP weights: show what a file holds, export a checkpoint to open_clip",
    ),
    "predict": Command(
        "tolclip.cli.predict:predict_main",
        False,
        "name the organisms in photos: Tree-of-Life ranks or your own labels, for any model",
    ),
    "embed": Command(
        "tolclip.cli.predict:embed_main", False, "image or label embeddings to parquet, npy or CSV"
    ),
    "index": Command(
        "tolclip.cli.predict:index_main",
        False,
        "build a Tree-of-Life label index (class-text embeddings of a taxonomy) for a model",
    ),
    "demo": Command(
        "tolclip.cli.demo:main",
        False,
        "a local web page: upload a photo, get names at every rank and for your labels (tolclip[demo])",
    ),
    "report": Command(
        "tolclip.cli.report:main",
        False,
        "tables from a sweep: the text-type ablation or the eval suite's models x tasks",
    ),
    "synthetic": Command(
        "tolclip.cli.synthetic:main",
        False,
        "write the synthetic tree of life (the embedded default data) as shards",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items())
    return (
        f"usage: tolclip <command> [arguments]   (tolclip {__version__})\n\n"
        f"BioCLIP-style CLIP models for the tree of life.\n\ncommands:\n{rows}\n\n"
        "`tolclip <command> --help` describes a command; Hydra commands take overrides (key=value) after it\n"
        "(and --debug first, for full tracebacks)."
    )


def _resolve(target: str) -> Callable:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"tolclip {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"tolclip: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    function = _resolve(command.target)  # imported only now: `tolclip --help` stays fast
    if command.hydra:
        # One line for a user error (the traceback goes to the run's error.log); --debug shows it.
        return run_hydra_command(name, function, rest)
    return int(function(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
