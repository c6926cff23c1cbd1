"""The build's settings (`BuildConfig`, from `configs/build/`), their validation and resume fingerprint."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tolclip.core.hashing import sha256_hex
from tolclip.core.taxonomy import RANKS
from tolclip.curate.dedup import DEFAULT_MAX_DISTANCE
from tolclip.data.images import DEFAULT_MAX_PIXELS

# Settings that change how a build runs, not what it writes: a resume may change them.
_RUN_ONLY = (
    "out_dir",
    "workers",
    "chunk_size",
    "resume",
    "overwrite",
    "keep_cache",
    "progress",
    "executor",
    "ray_address",
    "task_timeout",
    "dedup_partitions",
)
# What `out_dir/cache` holds; part of the resume fingerprint, so a cache written in another layout is never
# mixed into a new build (2: the spool of encoded samples; 3: the streaming builder's journal).
CACHE_FORMAT = 3
REENCODE = ("auto", "always")


class BuildError(Exception):
    """A bad config or input that stops the build; printed as one line, without a traceback."""


@dataclass
class BuildConfig:
    out_dir: Path
    sources: list[dict[str, Any]]
    taxonomy: dict[str, Any] = field(default_factory=lambda: {"backend": "taxoniq"})
    exclude_species: Any = None
    # Species kept out of training but written as a split of their own (unseen-species evaluation).
    holdout_species: Any = None
    holdout_split: str = "unseen"
    min_rank: str | None = None  # keep only images whose lineage is complete down to this rank
    eval_images: list[str] = field(default_factory=list)
    resize: dict[str, Any] = field(default_factory=lambda: {"mode": "squash", "size": 224})
    quality: int = 95
    # Decode a JPEG much larger than the target at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg),
    # then resize: several times faster on camera photos (docs/curation-at-scale.md has the PSNR).
    reduced_decode: bool = True
    # "auto": store a JPEG file as it is when re-encoding could only lose detail (already the stored size,
    # upright RGB, quantized at least as coarsely as `quality`: `data.images.original_fits`); "always".
    reencode: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_distance: int = DEFAULT_MAX_DISTANCE
    splits: dict[str, float] = field(default_factory=lambda: {"train": 95, "val": 5})
    train_small_fraction: float = 0.0
    max_count: int = 10_000
    max_bytes: int = 1 << 30
    # Image worker processes (0: in this process); with executor=ray, the CPUs asked of a local Ray.
    workers: int = 1
    # Images per task: fewer, larger messages (16 cost the driver 0.05 ms more per image).
    chunk_size: int = 64
    executor: str = "local"
    ray_address: str | None = (
        None  # executor=ray: an existing cluster ("auto", "ray://host:10001"), or a local one
    )
    task_timeout: float = 600.0  # seconds one task may take before the build stops with an error
    # 0: the near-duplicate index lives in the driver; N: in N partitions (Ray actors with executor=ray),
    # same decisions (tolclip.curate.dedup_partitioned).
    dedup_partitions: int = 0
    limit_per_source: int | None = None
    resume: bool = False
    # A fresh build into a non-empty out_dir refuses without it; with it, only a build's own files go.
    overwrite: bool = False
    keep_cache: bool = False
    progress: bool = True

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> BuildConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise BuildError(f"unknown build config key(s) {unknown}; known: {sorted(known)}")
        if not cfg.get("out_dir"):
            raise BuildError("out_dir is required")
        if not cfg.get("sources"):
            raise BuildError("no sources configured (sources: [{kind: ..., ...}])")
        c = cls(**{**cfg, "out_dir": Path(cfg["out_dir"])})
        c.sources = [dict(s) for s in c.sources]
        c._validate()
        return c

    def _validate(self) -> None:
        names = [s.get("source") or s.get("kind") for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise BuildError(
                f"source names must be unique (keys are built from them); repeated: {dup}; "
                "give each source its own `source:`"
            )
        splits = self.splits
        if not splits or any(v < 0 for v in splits.values()) or sum(splits.values()) <= 0:
            raise BuildError(f"splits must be non-negative percentages with a positive sum, not {splits}")
        if self.holdout_split in splits or self.holdout_split == "train_small":
            raise BuildError(
                f"holdout_split {self.holdout_split!r} must differ from the splits {sorted(splits)}"
            )
        if "train_small" in splits:
            raise BuildError("'train_small' is derived from train (train_small_fraction); not a split name")
        if self.min_rank is not None and self.min_rank not in RANKS:
            raise BuildError(f"min_rank must be one of {list(RANKS)} or null, not {self.min_rank!r}")
        # executor, workers and task_timeout are checked by `open_executor`, before anything is written.
        if self.reencode not in REENCODE:
            raise BuildError(f"reencode must be one of {list(REENCODE)}, not {self.reencode!r}")
        partitions = self.dedup_partitions
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 0:
            raise BuildError(f"dedup_partitions must be an integer >= 0, not {partitions!r}")
        if self.dedup_partitions and self.max_distance > 7:  # the partitions probe one flipped bit per band
            raise BuildError(f"dedup_partitions needs max_distance <= 7, not {self.max_distance}")
        if self.chunk_size < 1:
            raise BuildError(f"chunk_size must be >= 1, not {self.chunk_size}")
        if not 0 <= self.train_small_fraction <= 1:
            raise BuildError(f"train_small_fraction must be in [0, 1], not {self.train_small_fraction}")

    def fingerprint(self) -> str:
        """Hash of every setting that changes the output (resume refuses a changed config)."""
        keep = {k: v for k, v in self.__dict__.items() if k not in _RUN_ONLY}
        keep["cache_format"] = CACHE_FORMAT
        return sha256_hex(json.dumps(keep, sort_keys=True, default=str))
