"""A generator run in a forked child process, its items streamed back to this one over a pipe.

The build's scan stage (reading sources, taxonomy, the scan log) runs this way, so it overlaps the
driver's own serial work (dedup, shard writing, catalog) instead of adding to it.

`ChildStream(make, ...)` forks at once, before the caller starts threads or a Ray client (forking
those is unsafe), and the child waits; `items()` tells it to start and yields what `make()` yields,
then keeps the generator's return value in `result`. The pipe's buffer bounds how far the child runs
ahead. Every wait is bounded: a child that sends nothing for `timeout` seconds, dies or raises ends
the stream with a one-line `BuildError` (its own exception when that can be sent back).

`InlineStream` is the same interface in this process (no workers, or no fork on this platform).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Generator, Iterator
from typing import Any

from tolclip.curate.config import BuildError

_GO, _ITEM, _END, _ERROR = "go", "item", "end", "error"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_GRACE_S = 1.0  # how long close() lets the child end by itself before SIGTERM
_JOIN_S = 5.0  # how long it then waits after SIGTERM before SIGKILL


def can_fork() -> bool:
    return sys.platform.startswith("linux")


class InlineStream:
    """`make()`'s items, run here when `items()` is iterated; its return value in `result`."""

    def __init__(self, make: Callable[[], Generator[Any, None, Any]]) -> None:
        self._make = make
        self.result: Any = None

    def items(self) -> Iterator[Any]:
        self.result = yield from self._make()

    def close(self) -> None:
        return None

    def __enter__(self) -> InlineStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChildStream:
    """`make()` in a forked child; see the module docstring."""

    def __init__(self, make: Callable[[], Generator[Any, None, Any]], timeout: float, what: str) -> None:
        self._timeout, self._what = timeout, what
        self.result: Any = None
        ctx = multiprocessing.get_context("fork")
        self._conn, child_end = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_child_main, args=(child_end, self._conn, make), name=what, daemon=True
        )
        self._proc.start()
        child_end.close()  # only the child holds it now: its exit is our EOF

    def items(self) -> Iterator[Any]:
        self._conn.send(_GO)
        while True:
            kind, value = self._receive()
            if kind == _ITEM:
                yield value
            elif kind == _END:
                self.result = value
                return
            else:
                raise value

    def _receive(self) -> tuple[str, Any]:
        if not self._conn.poll(self._timeout):
            raise BuildError(
                f"the {self._what} sent nothing for {self._timeout:.0f} s (a source on a hung file system?); "
                "raise build.task_timeout if reading a source is this slow"
            )
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(_JOIN_S)
            raise BuildError(
                f"the {self._what} process ended without finishing (exit code {self._proc.exitcode}; "
                "out of memory?)"
            ) from None

    def close(self) -> None:
        """Stop the child and wait for it, bounded. Closing our end ends a child that waits to start or
        is blocked sending (EOF, broken pipe); one still scanning is terminated after a moment."""
        self._conn.close()
        self._proc.join(_GRACE_S)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(_JOIN_S)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(_JOIN_S)

    def __enter__(self) -> ChildStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child_main(conn: Any, parent_end: Any, make: Callable[[], Generator[Any, None, Any]]) -> None:
    parent_end.close()  # our copy of the parent's end would hide the parent's close (no EOF, no EPIPE)
    _die_with_parent()
    # The parent's objects are shared copy-on-write and are not this process's garbage: frozen, a full
    # collection here skips them instead of touching (and so copying) every page they live on.
    gc.freeze()
    # Ctrl-C is the parent's to handle (it then stops us); SIGTERM must just end this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        if conn.recv() != _GO:
            return
    except (EOFError, OSError):  # the parent gave up before starting us
        return
    try:
        generator = make()
        while True:
            try:
                item = next(generator)
            except StopIteration as stop:
                conn.send((_END, stop.value))
                return
            conn.send((_ITEM, item))
    except (BrokenPipeError, EOFError):  # the parent is gone: nobody to tell
        return
    except BaseException as err:
        try:
            conn.send((_ERROR, _sendable(err)))
        except OSError:
            pass


def _die_with_parent() -> None:
    """SIGTERM this process when the parent dies, even by SIGKILL (Linux prctl): a killed driver must
    not leave its scan stage blocked on the pipe for ever."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl: the parent's close() still ends us
        return
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def _sendable(err: BaseException) -> BaseException:
    """`err` itself when it survives pickling (the parent re-raises its type and text), else a BuildError."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return BuildError(f"{type(err).__name__}: {err}")
    return err
