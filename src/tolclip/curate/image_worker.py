"""The image stage's work, in worker processes (a local pool or Ray): decode, resize, encode and hash each
file, build its tar members. Everything here is a pure function of the file and the settings, so any
executor and any number of workers give the same results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tolclip.core.taxonomy import Taxon
from tolclip.curate.config import BuildConfig, BuildError
from tolclip.curate.dedup import EvalExclusion, content_hash, hash_box_factor, perceptual_hash
from tolclip.curate.journal import journal_line
from tolclip.curate.shard_writer import WRITE_BUFFER
from tolclip.data.images import ImageError, encode, load_image, original_fits, resize
from tolclip.data.shards import Sample, record_blob, to_record

_WORKER: dict[str, Any] = {}

ImageTask = tuple[str, str, Taxon, str, str]  # key, path, taxon, source, source_id


SPILL_DIR = "spill"  # under out_dir/cache


def image_settings(
    cfg: BuildConfig, exclusion: EvalExclusion | None, spill_dir: Path | None = None
) -> dict[str, Any]:
    """What a worker needs to process an image: the config's image settings and the eval hashes, and
    where to spill tar members (`spill_dir`, for workers that share the driver's disk) or None."""
    return {
        "spill_dir": str(spill_dir) if spill_dir is not None else None,
        "mode": cfg.resize.get("mode", "squash"),
        "size": int(cfg.resize.get("size", 224)),
        "quality": cfg.quality,
        "max_pixels": cfg.max_pixels,
        "reduced_decode": cfg.reduced_decode,
        "reencode": cfg.reencode,
        "exclusion": exclusion,
    }


def init_worker(settings: dict[str, Any]) -> None:
    """Run once in each worker process (and in the driver when it works alone) before any task."""
    _WORKER.clear()
    _WORKER.update(settings)


def process_chunk(tasks: list[ImageTask]) -> list[dict[str, Any]]:
    """`process_one` over a chunk of tasks (one executor task): results in task order, their tar members
    spilled to a file when the settings say where (`unspill` gives them back in the driver)."""
    results = [process_one(task) for task in tasks]
    for r in results:  # the driver's journal line, made here where the work is parallel
        r["journal"] = journal_line(r)
    if _WORKER.get("spill_dir") and results:
        _spill(results, Path(_WORKER["spill_dir"]) / f"{tasks[0][0]}.part")  # keys are unique file names
    return results


def _spill(results: list[dict[str, Any]], path: Path) -> None:
    # Pickled through a pool's pipe, 40 KB of tar members per image cost the driver about 0.15 ms of
    # reading (more than all its other work per image) and stalled the worker on the full pipe; a file
    # in the page cache costs both sides a few µs (docs/curation-at-scale.md).
    offset = 0
    try:
        with path.open("wb", buffering=WRITE_BUFFER) as fh:
            for r in results:
                if (blob := r.pop("blob", None)) is not None:
                    fh.write(blob)
                    r["spill"] = (str(path), offset)
                    offset += len(blob)
    except OSError as err:
        raise BuildError(f"cannot write the image stage's spill file {path}: {err.strerror or err}") from None


def unspill(results: list[dict[str, Any]]) -> Path | None:
    """In the driver: put back the `blob` of each spilled result (views of its chunk's file, read once).
    Returns that file, for the caller to delete once the blobs are written, or None."""
    spilled = [r for r in results if "spill" in r]
    if not spilled:
        return None
    path = Path(spilled[0]["spill"][0])
    try:
        data = memoryview(path.read_bytes())
    except OSError as err:
        raise BuildError(f"cannot read the image stage's spill file {path}: {err.strerror or err}") from None
    for r in spilled:
        _, offset = r.pop("spill")
        r["blob"] = data[offset : offset + r["length"]]
    return path


def process_one(task: ImageTask) -> dict[str, Any]:
    """Read, decode, resize, encode and hash one file, and build its tar members (runs in a worker).

    Never raises for bad input. The sample's tar members are built here, where the work is parallel:
    writing a shard is then only an append.
    """
    key, path, taxon, source, source_id = task
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        return {"key": key, "ok": False, "reason": f"unreadable: {err.strerror or err}"}
    try:
        mode, size = _WORKER["mode"], _WORKER["size"]
        reduce_for = (mode, size) if _WORKER["reduced_decode"] else None
        image = load_image(
            data, max_pixels=_WORKER["max_pixels"], reduce_for=reduce_for, scale_divides=hash_box_factor
        )
        stored, quality = resize(image, mode, size), _WORKER["quality"]
        keep = _WORKER["reencode"] == "auto" and original_fits(data, image, stored, quality)
        jpeg = data if keep else encode(stored, quality=quality)
    except ImageError as err:
        return {"key": key, "ok": False, "reason": err.reason, "sha256": content_hash(data)}
    digest, phash = content_hash(data), perceptual_hash(image)
    exclusion: EvalExclusion | None = _WORKER.get("exclusion")
    leak = exclusion.check_hashes(digest, phash) if exclusion is not None else None
    # Raw bytes: they travel to the driver as they are, which appends them to a shard; the journal
    # line never carries them.
    blob = record_blob(to_record(Sample(key, jpeg, taxon, source, source_id)))
    return {
        "key": key,
        "ok": True,
        "sha256": digest,
        "phash": phash,
        "width": image.width,
        "height": image.height,
        "leak": leak,
        "length": len(blob),
        "blob": blob,
    }
