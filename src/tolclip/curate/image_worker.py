"""The image stage's work, in a process pool: decode, resize, encode and hash each file, build its tar members."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
from collections.abc import Iterator
from typing import Any

from tolclip.core.taxonomy import Taxon
from tolclip.curate.config import BuildConfig
from tolclip.curate.dedup import EvalExclusion, content_hash, perceptual_hash
from tolclip.data.images import ImageError, encode, load_image, resize
from tolclip.data.shards import Sample, record_blob, to_record

_WORKER: dict[str, Any] = {}

ImageTask = tuple[str, str, Taxon, str, str]  # key, path, taxon, source, source_id


def image_settings(cfg: BuildConfig) -> dict[str, Any]:
    """What a worker needs from the config to process an image."""
    return {
        "mode": cfg.resize.get("mode", "squash"),
        "size": int(cfg.resize.get("size", 224)),
        "quality": cfg.quality,
        "max_pixels": cfg.max_pixels,
    }


def _init_worker(settings: dict[str, Any], exclusion: EvalExclusion | None) -> None:
    _WORKER.update(settings, exclusion=exclusion)


def _init_pool_worker(settings: dict[str, Any], exclusion: EvalExclusion | None) -> None:
    # A forked worker inherits the CLI's SIGTERM handler, which raises: Pool.terminate() (leaving the
    # pool's `with`) then interrupted workers inside the result queue's lock, and the build could hang
    # at its end. A worker must just die on SIGTERM, as multiprocessing expects.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _init_worker(settings, exclusion)


def process_one(task: ImageTask) -> dict[str, Any]:
    """Read, decode, resize, encode and hash one file, and build its tar members (runs in a worker).

    Never raises for bad input. The sample's tar members are built here, where the work is parallel:
    writing a shard is then only a concatenation.
    """
    key, path, taxon, source, source_id = task
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        return {"key": key, "ok": False, "reason": f"unreadable: {err.strerror or err}"}
    try:
        image = load_image(data, max_pixels=_WORKER["max_pixels"])
        jpeg = encode(resize(image, _WORKER["mode"], _WORKER["size"]), quality=_WORKER["quality"])
    except ImageError as err:
        return {"key": key, "ok": False, "reason": err.reason, "sha256": content_hash(data)}
    digest, phash = content_hash(data), perceptual_hash(image)
    exclusion: EvalExclusion | None = _WORKER.get("exclusion")
    leak = exclusion.check_hashes(digest, phash) if exclusion is not None else None
    # Raw bytes: the pool pickles them as they are; the spool's result line never carries them.
    blob = record_blob(to_record(Sample(key, jpeg, taxon, source, source_id)))
    return {
        "key": key,
        "ok": True,
        "sha256": digest,
        "phash": phash,
        "width": image.width,
        "height": image.height,
        "leak": leak,
        "blob": blob,
    }


def worker_pool(cfg: BuildConfig, exclusion: EvalExclusion | None) -> Any:
    """One pool for the whole build (images, then shards), or None to work in this process."""
    if cfg.workers <= 1:
        return contextlib.nullcontext(None)
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    return ctx.Pool(cfg.workers, initializer=_init_pool_worker, initargs=(image_settings(cfg), exclusion))


def process_images(
    tasks: list[ImageTask], cfg: BuildConfig, exclusion: EvalExclusion | None, pool: Any
) -> Iterator[dict[str, Any]]:
    """`process_one` over the tasks, in the pool from `worker_pool` (None: in this process)."""
    if pool is None:
        _init_worker(image_settings(cfg), exclusion)
        yield from map(process_one, tasks)
        return
    # imap keeps input order, so results (and the spool) come back deterministically.
    yield from pool.imap(process_one, tasks, chunksize=max(1, cfg.chunk_size))
