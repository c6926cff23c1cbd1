"""Safe reading of model files: weights and checkpoints are data, and must never run code when read."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch


def load_weights_only(path: Path, what: str = "checkpoint") -> Any:
    """`torch.load` of a file that must be data only: a checkpoint must not be able to run code.

    Any unpickling, zip or format error becomes one ValueError naming the file. Zip-format files are
    memory-mapped (tensors read lazily: no second in-memory copy); legacy files cannot be.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exn:  # noqa: BLE001 - every failure here means "not loadable as data"
        first = str(exn).strip().splitlines()[0] if str(exn).strip() else type(exn).__name__
        raise ValueError(f"{path} could not be read as a weights-only {what}: {first}") from None


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with code/ and constants.pkl; torch.save zips have neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
