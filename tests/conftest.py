"""Shared fixtures."""

from __future__ import annotations

import logging
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


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, no dashboard, a 256 MB object store), shut down at its
    end; executors opened meanwhile use it. Skips when Ray is not installed (`make test-ray` installs it)."""
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed: pip install -e '.[ray]' (make test-ray does)"
    )
    # Ray workers start in the repository root: tests/ on their path lets them import the tests' task
    # functions (pickled by reference, as the build's are). Set only while Ray starts (its raylet keeps
    # a copy for the workers it starts): a runtime_env would cost seconds per new worker.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), saved) if p)
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 2**20,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models on a shared 2-core machine: intra-op threading only adds sync waits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
