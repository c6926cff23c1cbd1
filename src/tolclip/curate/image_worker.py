"""The image stage's work, in worker processes (a local pool or Ray): decode, resize, encode and hash each
file, build its tar members. Everything here is a pure function of the file and the settings, so any
executor and any number of workers give the same results."""

from __future__ import annotations

from typing import Any

from tolclip.core.taxonomy import Taxon
from tolclip.curate.config import BuildConfig
from tolclip.curate.dedup import EvalExclusion, content_hash, hash_box_factor, perceptual_hash
from tolclip.data.images import ImageError, encode, load_image, resize
from tolclip.data.shards import Sample, record_blob, to_record

_WORKER: dict[str, Any] = {}

ImageTask = tuple[str, str, Taxon, str, str]  # key, path, taxon, source, source_id


def image_settings(cfg: BuildConfig, exclusion: EvalExclusion | None) -> dict[str, Any]:
    """What a worker needs to process an image: the config's image settings and the eval hashes."""
    return {
        "mode": cfg.resize.get("mode", "squash"),
        "size": int(cfg.resize.get("size", 224)),
        "quality": cfg.quality,
        "max_pixels": cfg.max_pixels,
        "reduced_decode": cfg.reduced_decode,
        "exclusion": exclusion,
    }


def init_worker(settings: dict[str, Any]) -> None:
    """Run once in each worker process (and in the driver when it works alone) before any task."""
    _WORKER.clear()
    _WORKER.update(settings)


def process_chunk(tasks: list[ImageTask]) -> list[dict[str, Any]]:
    """`process_one` over a chunk of tasks (one executor task): results in task order."""
    return [process_one(task) for task in tasks]


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
        jpeg = encode(resize(image, mode, size), quality=_WORKER["quality"])
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
