"""The Tree-of-Life shard format: one webdataset sample per image (see docs/shards.md).

Writing goes through `ShardWriter` for every producer (synthetic data, curation), so the format
is defined in exactly one place. Reading lives in `datamodule.py`; `decode_taxon` is shared.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image

from tolclip.captions import all_captions
from tolclip.taxonomy import Taxon

SHARD_PATTERN = "shard-%06d.tar"
TAXON_FILE = "taxon.json"
IMAGE_FILE = "jpg"


@dataclass(frozen=True)
class Sample:
    """One image with its taxon, ready to be written. `image` is encoded JPEG bytes."""

    key: str
    image: bytes
    taxon: Taxon
    source: str = ""
    source_id: str = ""


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def to_record(sample: Sample) -> dict[str, object]:
    """The webdataset dict for one sample: image, taxon.json and the ToL-10M text files."""
    if "." in sample.key or "/" in sample.key:
        # webdataset splits keys at the first dot; a dot or slash would corrupt the grouping.
        raise ValueError(f"sample key {sample.key!r} may not contain '.' or '/'")
    meta = {**sample.taxon.to_dict(), "source": sample.source, "source_id": sample.source_id}
    record: dict[str, object] = {
        "__key__": sample.key,
        IMAGE_FILE: sample.image,
        TAXON_FILE: json.dumps(meta, ensure_ascii=False).encode("utf-8"),
    }
    for filename, text in all_captions(sample.taxon).items():
        record[filename] = text.encode("utf-8")
    return record


def decode_taxon(raw: bytes | str | dict) -> Taxon:
    meta = json.loads(raw) if isinstance(raw, bytes | str) else raw
    return Taxon.from_dict(meta)


def write_shards(
    samples: Iterable[Sample],
    out_dir: str | os.PathLike,
    max_count: int = 10_000,
    max_bytes: int = 1 << 30,
) -> list[Path]:
    """Write samples to `out_dir/shard-000000.tar, ...`; returns the shard paths in order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pattern = str(out / SHARD_PATTERN)
    # A fixed mtime makes shards byte-reproducible and avoids a PAX header per member (a float
    # mtime needs one), which nearly halves the size of small-image shards.
    with wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_bytes, verbose=0, mtime=0) as sink:
        for sample in samples:
            sink.write(to_record(sample))
            current = Path(sink.fname)
            if not written or written[-1] != current:
                written.append(current)
    return written


def shard_spec(paths: list[Path]) -> str:
    """A brace pattern covering consecutive shards written by `write_shards`."""
    if not paths:
        raise ValueError("no shards were written")
    if len(paths) == 1:
        return str(paths[0])
    first, last = paths[0].stem.split("-")[-1], paths[-1].stem.split("-")[-1]
    return str(paths[0].parent / f"shard-{{{first}..{last}}}.tar")


def iter_records(url: str) -> Iterator[dict]:
    """Raw records of one local shard, for tools and tests (training uses the DataModule)."""
    yield from wds.WebDataset(url, shardshuffle=False)
