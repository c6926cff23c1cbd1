"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tolclip.data.shards import write_shards

from helpers import make_samples

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def small_shards(tmp_path: Path) -> Path:
    write_shards(make_samples(40), tmp_path / "train", max_count=10)
    write_shards(make_samples(12, prefix="v"), tmp_path / "val", max_count=100)
    return tmp_path


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models on a shared 2-core machine: intra-op threading only adds sync waits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
