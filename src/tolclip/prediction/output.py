"""Writing predictions and embeddings: a table on the terminal, CSV, JSON, parquet; npy with an index CSV.

Every format keeps every row (failures included, with their ``error``); columns are fixed per kind of
prediction, so files from different runs line up. Nothing is overwritten unless the caller says so.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("table", "csv", "json", "parquet")
EMBED_FORMATS = ("parquet", "npy", "csv")


def check_output(output: str | None, force: bool) -> None:
    """Refuse to replace an existing file unless ``force``; stdout ("-" or None) is always fine."""
    if output and output != "-" and Path(output).exists() and not force:
        raise FileExistsError(f"{output} exists; pass --force to replace it")


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: ("" if r.get(c) is None else r.get(c)) for c in columns} for r in rows)
    return buf.getvalue()


def _table_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    from rich.console import Console
    from rich.table import Table

    shown = [c for c in columns if any(r.get(c) not in ("", None) for r in rows)] or list(columns)
    table = Table(show_lines=False)
    for c in shown:
        table.add_column(c, justify="right" if c == "score" else "left", overflow="fold")
    for r in rows:
        table.add_row(*(_cell(r.get(c)) for c in shown))
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    return console.file.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_rows(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str, output: str | None = None
) -> None:
    """Rows in ``fmt`` to ``output`` (None or "-": stdout; parquet needs a file)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    to_stdout = not output or output == "-"
    if fmt == "parquet":
        if to_stdout:
            raise ValueError("parquet is written to a file: pass --output FILE.parquet")
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {c: [r.get(c) if c == "score" else _cell(r.get(c)) for r in rows] for c in columns}
        types = {c: pa.float64() if c == "score" else pa.string() for c in columns}
        table = pa.table({c: pa.array(v, type=types[c]) for c, v in cols.items()})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        _atomic_write(Path(output), sink.getvalue().to_pybytes())
        return
    if fmt == "json":
        text = json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=1) + "\n"
    elif fmt == "csv":
        text = _csv_text(rows, columns)
    else:
        text = _table_text(rows, columns)
    if to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        _atomic_write(Path(output), text.encode("utf-8"))


def write_embeddings(
    keys: Sequence[str],
    vectors: np.ndarray,
    fmt: str,
    output: str,
    meta: Mapping[str, Any],
    errors: Mapping[str, str] | None = None,
) -> list[Path]:
    """Embeddings keyed by path (or label) with the model's fingerprint in the metadata; returns files written.

    parquet: columns ``key``, ``embedding`` (list<float32>), ``error``; the metadata in the schema.
    npy: ``output`` [N, D] float32, plus ``<stem>.index.csv`` (row, key, error) and ``<stem>.json`` (metadata).
    csv: ``key``, ``error``, then one column per dimension; the metadata in ``<stem>.json``.
    Unreadable inputs keep a row: NaN vectors (npy/csv) or a null embedding (parquet), and their error.
    """
    if fmt not in EMBED_FORMATS:
        raise ValueError(f"unknown embedding format {fmt!r}; choose one of {', '.join(EMBED_FORMATS)}")
    errors = dict(errors or {})
    out = Path(output)
    meta_json = json.dumps(dict(meta), indent=1)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = int(vectors.shape[1]) if vectors.ndim == 2 else 0
        emb = [
            None if k in errors else row.astype(np.float32).tolist()
            for k, row in zip(keys, vectors, strict=True)
        ]
        table = pa.table(
            {
                "key": pa.array(list(keys), pa.string()),
                "embedding": pa.array(emb, pa.list_(pa.float32(), dim) if dim else pa.list_(pa.float32())),
                "error": pa.array([errors.get(k, "") for k in keys], pa.string()),
            }
        ).replace_schema_metadata({"tolclip": meta_json})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        _atomic_write(out, sink.getvalue().to_pybytes())
        return [out]
    side = out.with_suffix(".json")
    index_rows = [{"row": i, "key": k, "error": errors.get(k, "")} for i, k in enumerate(keys)]
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, vectors.astype(np.float32))
        _atomic_write(out, buf.getvalue())
        index = out.with_suffix(".index.csv")
        _atomic_write(index, _csv_text(index_rows, ("row", "key", "error")).encode("utf-8"))
        _atomic_write(side, (meta_json + "\n").encode("utf-8"))
        return [out, index, side]
    dims = [f"e{i}" for i in range(vectors.shape[1])]
    rows = [
        {"key": k, "error": errors.get(k, ""), **dict(zip(dims, (f"{x:.7g}" for x in vec), strict=True))}
        for k, vec in zip(keys, vectors, strict=True)
    ]
    _atomic_write(out, _csv_text(rows, ("key", "error", *dims)).encode("utf-8"))
    _atomic_write(side, (meta_json + "\n").encode("utf-8"))
    return [out, side]
