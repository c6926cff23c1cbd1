"""One rank of a test's own 2-process gloo group: set up, and always torn down. Its own small module
because spawned ranks import the module of what they run, and this one needs only torch."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


@contextmanager
def gloo_rank(rank: int, world: int, port: int, out_dir: str | os.PathLike) -> Iterator[None]:
    """Join the group on localhost:port with one thread; a failure leaves `rank<N>.err` in out_dir."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)  # several ranks on a small shared machine
    # The collective timeout turns a stuck peer into an exception instead of a hang.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        yield
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
