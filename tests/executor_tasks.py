"""Task functions for tests/test_executor.py, in a module of their own: a Ray worker imports it to run them
(they are pickled by reference), and it stays light (no torch, no test helpers) so workers start fast."""

from __future__ import annotations

import os
import time
from typing import Any

from tolclip.curate.config import BuildError

# What `record_init` recorded in this process (a worker's own copy there).
_INITS: list[str] = []


def record_init(arg: str) -> None:
    _INITS.append(arg)


def failing_init(arg: str) -> None:
    raise RuntimeError(f"init failed: {arg}")


def inits_seen(_: Any) -> tuple[int, list[str]]:
    return os.getpid(), list(_INITS)


def square_unevenly(i: int) -> int:
    # Every third item is slow: with several workers, later items finish before earlier ones.
    time.sleep(0.15 if i % 3 == 0 else 0.0)
    return i * i


def square(i: int) -> int:
    return i * i


def fail_on_3(i: int) -> int:
    if i == 3:
        raise ValueError(f"bad item {i}")
    return i


def build_error(i: int) -> int:
    raise BuildError(f"item {i} is bad")


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class TwoArgs(Exception):
    """Pickles as TwoArgs("1/2"), which its __init__ refuses: it cannot cross processes as it is."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_two_args(i: int) -> int:
    raise TwoArgs(i, 2)


class Tally:
    """An actor with state: what it was given so far, and in which process."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def add(self, value: int) -> tuple[int, list[int]]:
        self.seen.append(value)
        return os.getpid(), list(self.seen)
