"""`tolclip demo`: a local web page that names the organism in a photo, like BioCLIP's public demo.

    pip install 'tolclip[demo]'
    tolclip demo --model bioclip/ --taxa catalog.parquet          # then open http://127.0.0.1:7860

Upload a photo and the page shows the top-k names at every rank, kingdom to species, and, when custom
labels are given (comma separated), the most likely of those. The model and the Tree-of-Life index are
loaded once at start; each request embeds one image. The server listens on localhost only unless --host
says otherwise, and nothing reaches the network: no analytics, no share link, no web fonts.

Exit status: 0 after Ctrl+C, 2 for bad usage or input (no gradio, a missing model, a port in use).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict
from typing import Any

from tolclip.cli.predict import (
    EXIT_OK,
    EXIT_USAGE,
    add_cache_args,
    add_model_source_args,
    add_tol_args,
    guard,
    parse_args,
    resolve_model,
    taxa_from_arg,
)
from tolclip.core.taxonomy import RANKS
from tolclip.models.loading import LoadedModel
from tolclip.prediction.classify import CustomLabelsClassifier, TreeOfLifeClassifier

NEEDS_GRADIO = "tolclip demo needs gradio: pip install 'tolclip[demo]'"
# Label sets kept embedded at once: each request may bring new ones, memory stays bounded.
LABEL_SETS_KEPT = 16
# Shown first and widest: the answer most people come for.
RANK_ORDER = ("species", "genus", "family", "order", "class", "phylum", "kingdom")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tolclip demo",
        description="A local web page: upload a photo, get the top names at every rank and for your labels.",
    )
    add_model_source_args(p)
    add_tol_args(p)
    p.add_argument(
        "--subset", help="keep taxa under these names (any rank; rank=name; or a CSV, first column a rank)"
    )
    p.add_argument("--k", type=int, default=5, help="names shown per rank (default 5)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--max-file-size", default="20mb", help="largest upload accepted (default 20mb)")
    add_cache_args(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.taxa and args.index:
        raise ValueError("give --taxa or --index, not both")
    if args.k < 1:
        raise ValueError(f"--k must be at least 1, not {args.k}")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, not {args.port}")


def _name(row: dict[str, Any], rank: str) -> str:
    """What the page calls a prediction row's taxon at ``rank``: the name there ("Amanita muscaria (fly
    agaric)" for a species), or a placeholder where the taxa leave that rank empty."""
    if rank == "species":
        name = row["species"] or ""
        return f"{name} ({row['common_name']})" if name and row["common_name"] else name or "(no species)"
    return row[rank] or f"(no {rank})"


def rank_scores(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Prediction rows (``rank="all"``) -> {rank: {name: probability}}, best first within a rank.

    Two lineages may share a name at a rank (a homonym, or both empty there); the later one is told apart
    by its parent, so that neither probability is lost from the page."""
    out: dict[str, dict[str, float]] = {r: {} for r in RANKS}
    for row in rows:
        if row.get("error"):
            raise ValueError(row["error"])
        rank = row["rank"]
        name = _name(row, rank)
        if name in out[rank]:
            parents = [row[r] for r in RANKS[: RANKS.index(rank)] if row[r]]
            name = f"{name} [{parents[-1] if parents else '?'}]"
        while name in out[rank]:
            name += "'"
        out[rank][name] = float(row["score"])
    return out


class DemoPredictor:
    """The model and its Tree-of-Life index, loaded once; custom-label indexes built on first use."""

    def __init__(self, model: LoadedModel, args: argparse.Namespace) -> None:
        # One image per request: loader processes would cost more than they save.
        self.common = {
            "device": args.device,
            "batch_size": 1,
            "num_workers": 0,
            "templates": args.templates,
            "cache_dir": None if args.no_cache else (args.cache_dir or "default"),
            "progress": False,
        }
        self.tol = TreeOfLifeClassifier(
            model,
            taxa=taxa_from_arg(args.taxa),
            index=args.index,
            text_type=args.text_type,
            subset=args.subset,
            **self.common,
        )
        self.model, self.k = self.tol.model, args.k
        self._label_sets: OrderedDict[tuple[str, ...], CustomLabelsClassifier] = OrderedDict()

    def ranks(self, image: str) -> dict[str, dict[str, float]]:
        return rank_scores(self.tol.predict(image, rank="all", k=self.k))

    def _labels_classifier(self, labels: tuple[str, ...]) -> CustomLabelsClassifier:
        if labels in self._label_sets:
            self._label_sets.move_to_end(labels)
        else:
            self._label_sets[labels] = CustomLabelsClassifier(self.model, labels, **self.common)
            if len(self._label_sets) > LABEL_SETS_KEPT:
                self._label_sets.popitem(last=False)
        return self._label_sets[labels]

    def labels(self, image: str, text: str) -> dict[str, float] | None:
        """The probability of each custom label (comma separated), None when none are given."""
        labels = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
        if not labels:
            return None
        rows = self._labels_classifier(labels).predict(image)
        if rows and rows[0].get("error"):
            raise ValueError(rows[0]["error"])
        return {r["classification"]: float(r["score"]) for r in rows}


def _answer(gr: Any, predictor: DemoPredictor, image: str | None, text: str) -> list[Any]:
    """One click: a label value per rank (RANK_ORDER), then the custom labels' answer."""
    if not image:
        raise gr.Error("Upload a photo first.")
    start = time.perf_counter()
    try:
        scores = predictor.ranks(image)
    except ValueError as exn:  # an upload that is not a readable image
        raise gr.Error(str(exn)) from None
    try:
        custom = predictor.labels(image, text or "")
    except ValueError as exn:  # fewer than two labels: the ranks are still worth showing
        gr.Warning(str(exn))
        custom = None
    print(f"tolclip demo: answered in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return [scores[r] for r in RANK_ORDER] + [custom]


def build_app(predictor: DemoPredictor, source: str) -> Any:
    """The page: photo, custom labels and a button on the left; one ranked list per rank on the right."""
    import gradio as gr

    k = predictor.k
    with gr.Blocks(title="tolclip demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"## Name the organism in a photo\nModel `{predictor.model.name}` · "
            f"{len(predictor.tol.index)} taxa from `{source}` · top {k} at each rank"
        )
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                # A file path with the mode kept: the classifier reads the upload exactly as it
                # reads a photo on disk (EXIF orientation, size limits).
                image = gr.Image(
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    label="Photo",
                    elem_id="photo",
                    height=320,
                )
                text = gr.Textbox(
                    label="Custom labels (optional, comma separated)",
                    placeholder="Amanita muscaria, Boletus edulis, a rock",
                    elem_id="custom-labels",
                )
                button = gr.Button("Identify", variant="primary", elem_id="identify")
                custom = gr.Label(label="Custom labels", num_top_classes=k, elem_id="custom-result")
            with gr.Column(scale=3):
                outputs = {}
                for row in (RANK_ORDER[:2], RANK_ORDER[2:4], RANK_ORDER[4:6], RANK_ORDER[6:]):
                    with gr.Row():
                        for rank in row:
                            outputs[rank] = gr.Label(
                                label=rank.capitalize(), num_top_classes=k, elem_id=f"rank-{rank}"
                            )
        answer_outputs = [outputs[r] for r in RANK_ORDER] + [custom]
        for event in (button.click, text.submit):
            event(
                lambda img, txt: _answer(gr, predictor, img, txt),
                inputs=[image, text],
                outputs=answer_outputs,
                concurrency_limit=1,  # one model: requests take turns
            )
    return app


def _quiet_network() -> None:
    # Before gradio is imported: it reads these at import and at Blocks().
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    _quiet_network()
    try:
        import gradio  # noqa: F401  (checked before the slow model load)
    except ImportError:
        print(NEEDS_GRADIO, file=sys.stderr)
        return EXIT_USAGE
    start = time.perf_counter()
    predictor = DemoPredictor(resolve_model(args), args)
    source = args.index or predictor.tol.index.meta.get("source") or args.taxa or "the model's taxa"
    print(
        f"tolclip demo: {predictor.model.name} and {len(predictor.tol.index)} taxa ready in "
        f"{time.perf_counter() - start:.1f} s on {predictor.tol.device}",
        file=sys.stderr,
    )
    app = build_app(predictor, str(source))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tolclip demo: listening on {args.host}: other machines can reach this page", file=sys.stderr)
    try:
        _, url, _ = _launch(app, args)
    except OSError as exn:  # gradio's "Cannot find empty port in range: ..." (and its advice) and the like
        reason = str(exn).split(". ")[0]
        raise OSError(f"cannot serve on {args.host}:{args.port} ({reason}); pass another --port") from None
    print(f"tolclip demo: open {url} (Ctrl+C to stop)", flush=True)
    app.block_thread()  # until Ctrl+C, which closes the server
    return EXIT_OK


def _launch(app: Any, args: argparse.Namespace) -> tuple[Any, str, str | None]:
    """Serve without blocking. Options are those of gradio 6; the ones an older gradio (5) lacks are left
    out, and footer_links=[] is gradio 5's show_api=False: no link to an API page."""
    import inspect

    options = dict(
        server_name=args.host,
        server_port=args.port,
        share=False,
        inbrowser=False,
        quiet=True,
        show_error=True,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
        max_file_size=args.max_file_size,
        footer_links=[],
        show_api=False,
        prevent_thread_lock=True,  # returns once serving: the URL is printed only for a live server
    )
    accepted = inspect.signature(app.launch).parameters
    return app.launch(**{k: v for k, v in options.items() if k in accepted})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(_parser(), argv)
    return args if isinstance(args, int) else guard("tolclip demo", _run, args)
