"""`tolclip predict`, `tolclip embed`, `tolclip index build`: a trained or imported model, used on photos.

    tolclip predict photos/ --model bioclip/ --taxa catalog.parquet --rank genus,species --k 3
    tolclip predict IMG_0042.jpg --cls "Amanita muscaria,Boletus edulis" --format json
    tolclip embed photos/ --model bioclip/ --output photos.parquet
    tolclip index build --model bioclip/ --taxa names.csv

Exit status: 0 when every image was read, 1 when some could not be (each has a row saying why), 2 for
bad usage or input (a missing model, an unknown rank, a subset that names nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tolclip import __version__
from tolclip.core.captions import TEXT_TYPES
from tolclip.core.taxonomy import RANKS
from tolclip.core.templates import TEMPLATE_SETS
from tolclip.data.images import ImageError
from tolclip.evaluation.tasks import TaskError
from tolclip.models.loading import LoadedModel, load_path, pick_device
from tolclip.models.open_clip_config import QUICK_GELU_HELP
from tolclip.prediction.classify import (
    LABEL_COLUMNS,
    TOL_COLUMNS,
    CustomLabelsBinningClassifier,
    CustomLabelsClassifier,
    TreeOfLifeClassifier,
    error_row,
    read_bins,
)
from tolclip.prediction.encode import PRECISIONS, embed_images
from tolclip.prediction.index import (
    IndexError_,
    build_index,
    classes_fingerprint,
    default_cache_dir,
    index_dir,
    model_fingerprint,
    save_index,
    templates_key,
)
from tolclip.prediction.inputs import expand_inputs
from tolclip.prediction.output import EMBED_FORMATS, FORMATS, check_output, write_embeddings, write_rows
from tolclip.prediction.taxa import Taxa, TaxaError, read_taxa, unique_taxa

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, TaxaError, IndexError_, TaskError, OSError)


def _default_workers() -> int:
    # One decoding process per spare core: on 2 cores the model's threads need the other one.
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="image tower arithmetic: bf16 is about 2x faster on CPUs with AVX-512 BF16 and on GPUs, "
        "scores within ~1e-3 of fp32 (default fp32: the same numbers as open_clip)",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    add_model_source_args(p)
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=_default_workers(), help="image-decoding processes")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")


def add_model_source_args(p: argparse.ArgumentParser) -> None:
    """--model, --quick-gelu, --device: which model, on what (also `tolclip demo`'s)."""
    p.add_argument(
        "--model",
        help="an open_clip/BioCLIP folder, a state dict (.safetensors/.bin/.pt), a tolclip .ckpt or run "
        "folder; default: the newest run under ./logs/train/runs",
    )
    p.add_argument(
        "--quick-gelu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="activation of a bare state dict (OpenAI CLIP/BioCLIP: --quick-gelu; LAION: --no-quick-gelu)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")


def add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--templates", default="openai", choices=sorted(TEMPLATE_SETS), help="prompt templates")
    p.add_argument(
        "--cache-dir", default=None, help=f"index cache (default {default_cache_dir()}, $TOLCLIP_CACHE)"
    )
    p.add_argument("--no-cache", action="store_true", help="build label embeddings in memory only")


def add_tol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--taxa",
        help="the taxa to name: a catalog.parquet/folder from build-shards, a CSV of ranks or of scientific "
        "names (completed offline), the synthetic taxa.json, or task:NAME (a suite task); default: the "
        "model's training taxa",
    )
    p.add_argument("--index", help="a folder written by `tolclip index build` (instead of --taxa)")
    p.add_argument(
        "--text-type", default="taxon_com", choices=TEXT_TYPES, help="how taxa are named in prompts"
    )


def _predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tolclip predict", description="Name the organisms in photos.")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    add_model_args(p)
    add_precision_arg(p)
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--cls", help='custom labels, comma separated: "Amanita muscaria,Boletus edulis"')
    labels.add_argument("--cls-file", help="custom labels, one per line")
    labels.add_argument("--bins", help="CSV: label,bin (labels' probabilities summed per bin)")
    add_tol_args(p)
    p.add_argument("--rank", default=None, help=f"{', '.join(RANKS)}, several comma separated, or all")
    p.add_argument(
        "--subset", help="keep taxa under these names (any rank; rank=name; or a CSV, first column a rank)"
    )
    p.add_argument("--k", type=int, default=None, help="top names per image and rank (default 5; all labels)")
    p.add_argument(
        "--min-prob", type=float, default=1e-9, help="species at or below this are left out of rank sums"
    )
    p.add_argument(
        "--format", choices=FORMATS, default=None, help="default: from --output's suffix, else table"
    )
    p.add_argument("--output", help="file to write (default: stdout)")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")
    add_cache_args(p)
    return p


def resolve_model(args: argparse.Namespace) -> LoadedModel:
    if not args.model:
        # Imported here: the evaluation suite pulls in scikit-learn, SciPy and pandas (about 1 s of start-up).
        from tolclip.evaluation.suite import latest_checkpoint

        try:
            path = str(latest_checkpoint("logs"))
        except FileNotFoundError as exn:
            raise FileNotFoundError(f"no --model given, and {exn}; or pass --model") from None
        print(f"tolclip: using the newest training run's model {path}", file=sys.stderr)
    try:
        return load_path(args.model or path, args.quick_gelu)
    except ValueError as exn:
        if QUICK_GELU_HELP not in str(exn):
            raise
        # The loader names the API's argument; a command-line user needs the flag.
        message = str(exn).replace("quick_gelu=True", "--quick-gelu")
        raise ValueError(message.replace("quick_gelu=False", "--no-quick-gelu")) from None


def _task_taxa(name: str) -> Taxa:
    """The classes of an evaluation task (configs/suite/task/NAME.yaml), resolved as the suite does."""
    from hydra import compose, initialize_config_module

    from tolclip.evaluation.tasks import load_task

    with initialize_config_module("tolclip.configs", version_base="1.3"):
        cfg = compose("eval_suite", overrides=[f"suite/task={name}", f"paths.root_dir={Path.cwd()}"])
    task = load_task(cfg.task)
    taxa, _ = unique_taxa(task.classes)
    return Taxa(taxa, f"task:{name}")


def taxa_from_arg(spec: str | None) -> Taxa | None:
    if spec is None:
        return None
    taxa = _task_taxa(spec.removeprefix("task:")) if spec.startswith("task:") else read_taxa(spec)
    if taxa.unresolved:  # kept as given, but the user should know their lineage is incomplete
        shown = ", ".join(taxa.unresolved[:5]) + (", ..." if len(taxa.unresolved) > 5 else "")
        print(
            f"tolclip: {len(taxa.unresolved)} names not in the offline taxonomy, kept as given: {shown}",
            file=sys.stderr,
        )
    return taxa


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = Path(args.output).suffix.lstrip(".") if args.output else ""
    return suffix if suffix in FORMATS else ("csv" if args.output else "table")


def _check_predict_args(args: argparse.Namespace) -> None:
    custom = args.cls or args.cls_file or args.bins
    if custom and (args.rank or args.subset or args.taxa or args.index):
        raise ValueError(
            "--rank, --subset, --taxa and --index are for Tree-of-Life prediction, not with --cls/--bins"
        )
    if args.taxa and args.index:
        raise ValueError("give --taxa or --index, not both")
    if args.k is not None and args.k < 1:
        raise ValueError(f"--k must be at least 1, not {args.k}")
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError("--batch-size must be at least 1 and --workers at least 0")


def _classifier(args: argparse.Namespace, model: LoadedModel) -> Any:
    common = {
        "device": args.device,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "templates": args.templates,
        "cache_dir": None if args.no_cache else (args.cache_dir or "default"),
        "progress": args.progress,
        "precision": args.precision,
    }
    if args.bins:
        return CustomLabelsBinningClassifier(model, read_bins(args.bins), **common)
    if args.cls or args.cls_file:
        text = (
            Path(args.cls_file).read_text(encoding="utf-8").splitlines()
            if args.cls_file
            else args.cls.split(",")
        )
        return CustomLabelsClassifier(model, text, **common)
    return TreeOfLifeClassifier(
        model,
        taxa=taxa_from_arg(args.taxa),
        index=args.index,
        text_type=args.text_type,
        subset=args.subset,
        **common,
    )


def _run_predict(args: argparse.Namespace) -> int:
    _check_predict_args(args)
    fmt = _format(args)
    if fmt == "parquet" and (not args.output or args.output == "-"):  # say so before any image is read
        raise ValueError("parquet is written to a file: pass --output FILE.parquet")
    check_output(args.output, args.force)
    inputs = expand_inputs(args.images)
    clf = _classifier(args, resolve_model(args))
    start = time.perf_counter()
    if isinstance(clf, TreeOfLifeClassifier):
        columns = TOL_COLUMNS
        rows = clf.predict(inputs.paths, rank=args.rank or "species", k=args.k or 5, min_prob=args.min_prob)
    else:
        columns = LABEL_COLUMNS
        rows = clf.predict(inputs.paths, k=args.k)
    rows = [error_row(columns, arg, reason) for arg, reason in inputs.problems] + rows
    write_rows(rows, columns, fmt, args.output)
    failed = sum(1 for r in rows if r.get("error"))
    images = len(inputs.paths)
    print(
        f"tolclip predict: {images} images in {time.perf_counter() - start:.1f} s; {failed} unreadable",
        file=sys.stderr,
    )
    return EXIT_SOME_FAILED if failed else EXIT_OK


def guard(prog: str, run: Any, args: argparse.Namespace) -> int:
    try:
        return run(args)
    except USER_ERRORS as exn:
        print(f"{prog}: error: {exn}", file=sys.stderr)
        return EXIT_USAGE
    except ImageError as exn:  # an in-memory input of the API; files are reported per row
        print(f"{prog}: error: {exn.reason}", file=sys.stderr)
        return EXIT_USAGE


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    try:
        return parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # argparse has printed its message (2) or the help (0)
        return int(exit_.code or 0)


def predict_main(argv: list[str] | None = None) -> int:
    args = parse_args(_predict_parser(), argv)
    return args if isinstance(args, int) else guard("tolclip predict", _run_predict, args)


# --------------------------------------------------------------------------------------------- embed


def _embed_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tolclip embed", description="Image (or label) embeddings, keyed by path (or label)."
    )
    p.add_argument("images", nargs="*", help="image files, folders or glob patterns")
    add_model_args(p)
    add_precision_arg(p)
    p.add_argument(
        "--text", help="embed these labels (comma separated) instead of images, averaged over --templates"
    )
    p.add_argument("--text-file", help="labels to embed, one per line")
    p.add_argument("--output", required=True, help="file to write: .parquet, .npy (+ .index.csv) or .csv")
    p.add_argument("--format", choices=EMBED_FORMATS, default=None, help="default: from --output's suffix")
    p.add_argument("--no-normalize", action="store_true", help="image embeddings before L2 normalisation")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")
    p.add_argument(
        "--templates", default="openai", choices=sorted(TEMPLATE_SETS), help="prompt templates for --text"
    )
    return p


def _embed_meta(model: LoadedModel, kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "model": {"fingerprint": model_fingerprint(model), "name": model.name, "source": model.source},
        "net_config": model.net_config,
        "tolclip_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def _run_embed(args: argparse.Namespace) -> int:
    texts = args.text.split(",") if args.text else None
    if args.text_file:
        texts = Path(args.text_file).read_text(encoding="utf-8").splitlines()
    if bool(texts) == bool(args.images):
        raise ValueError("give images or --text/--text-file, not both and not neither")
    fmt = args.format or Path(args.output).suffix.lstrip(".")
    if fmt not in EMBED_FORMATS:
        raise ValueError(
            f"cannot tell the format from {args.output!r}: pass --format ({', '.join(EMBED_FORMATS)})"
        )
    check_output(args.output, args.force)
    model = resolve_model(args)
    device = pick_device(args.device)
    model.net.to(device).eval()
    if texts:
        index = build_index(model, [t for t in texts if t.strip()], templates=args.templates)
        meta = _embed_meta(
            model, "text", templates=index.meta["templates"], count=len(index), dim=index.meta["dim"]
        )
        written = write_embeddings(index.names, index.embeddings.numpy(), fmt, args.output, meta)
        print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
        return EXIT_OK
    return _embed_images(args, model, device, fmt)


def _embed_images(args: argparse.Namespace, model: LoadedModel, device: str, fmt: str) -> int:
    import numpy as np

    inputs = expand_inputs(args.images)
    emb = embed_images(
        model,
        inputs.paths,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=device,
        normalize=not args.no_normalize,
        progress=args.progress,
        precision=args.precision,
    )
    dim = int(emb.features.shape[1]) if emb.features.numel() else int(model.net_config.get("embed_dim", 0))
    vectors = np.full((len(emb.keys), dim), np.nan, dtype=np.float32)
    if emb.ok:
        vectors[emb.ok] = emb.features.numpy()
    errors = {emb.keys[pos]: reason for pos, reason in emb.failures.items()}
    errors.update(dict(inputs.problems))
    keys = [arg for arg, _ in inputs.problems] + emb.keys
    vectors = np.concatenate([np.full((len(inputs.problems), dim), np.nan, np.float32), vectors])
    meta = _embed_meta(
        model, "image", normalized=not args.no_normalize, count=len(keys), dim=dim, failed=len(errors)
    )
    written = write_embeddings(keys, vectors, fmt, args.output, meta, errors)
    print(f"wrote {', '.join(map(str, written))}; {len(errors)} unreadable", file=sys.stderr)
    return EXIT_SOME_FAILED if errors else EXIT_OK


def embed_main(argv: list[str] | None = None) -> int:
    args = parse_args(_embed_parser(), argv)
    return args if isinstance(args, int) else guard("tolclip embed", _run_embed, args)


# --------------------------------------------------------------------------------------------- index


def _index_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tolclip index",
        description="Tree-of-Life label indexes: class-text embeddings of taxa for a model.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="embed every taxon of a taxonomy with a model and save the index")
    add_model_args(build)
    add_tol_args(build)
    add_cache_args(build)
    build.add_argument("--out", help="folder to write (default: the cache, where predict finds it)")
    build.add_argument("--force", action="store_true", help="replace an existing index folder")
    return p


def _run_index(args: argparse.Namespace) -> int:
    if args.index:
        raise ValueError("--index names an existing index; `index build` writes one (use --out)")
    model = resolve_model(args)
    model.net.to(pick_device(args.device)).eval()
    taxa = taxa_from_arg(args.taxa)
    if taxa is None:
        from tolclip.prediction.model_taxa import model_taxa_source

        taxa = read_taxa(model_taxa_source(model))
    fp = model_fingerprint(model)
    out = args.out or index_dir(
        args.cache_dir or default_cache_dir(),
        fp,
        classes_fingerprint(taxa.taxa),
        args.text_type,
        templates_key(args.templates)[0],
    )
    index = build_index(
        model, taxa.taxa, text_type=args.text_type, templates=args.templates, source=taxa.source, model_fp=fp
    )
    save_index(index, out, force=args.force)
    summary = {k: index.meta[k] for k in ("count", "dim", "text_type", "templates", "seconds")}
    print(json.dumps({**summary, "unresolved_names": len(taxa.unresolved), "out": str(out)}, indent=1))
    return EXIT_OK


def index_main(argv: list[str] | None = None) -> int:
    args = parse_args(_index_parser(), argv)
    return args if isinstance(args, int) else guard("tolclip index", _run_index, args)
