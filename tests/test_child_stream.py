"""The scan stage's process (`tolclip.curate.child_stream`): items, return value, errors and every wait
bounded. The build's own tests run it through `build()` with workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tolclip.curate.child_stream import ChildStream, InlineStream, can_fork
from tolclip.curate.config import BuildError

pytestmark = pytest.mark.skipif(not can_fork(), reason="the scan stage forks only on Linux")


def _counting(n: int):
    def make():
        for i in range(n):
            yield {"i": i, "pid": os.getpid()}
        return f"{n} sent"

    return make


@pytest.mark.parametrize("kind", ["child", "inline"])
def test_items_and_the_return_value_come_back_in_order(kind: str) -> None:
    stream = ChildStream(_counting(50), 30, "test stage") if kind == "child" else InlineStream(_counting(50))
    with stream:
        items = list(stream.items())
    assert [x["i"] for x in items] == list(range(50))
    assert stream.result == "50 sent"
    pids = {x["pid"] for x in items}
    assert (pids != {os.getpid()}) if kind == "child" else (pids == {os.getpid()})


def test_an_error_in_the_child_is_raised_here_as_itself() -> None:
    def make():
        yield 1
        raise BuildError("source 'birds': table x.csv does not exist")

    with ChildStream(make, 30, "test stage") as stream:
        got = []
        with pytest.raises(BuildError, match="^source 'birds': table x.csv does not exist$"):
            for item in stream.items():
                got.append(item)
    assert got == [1]


def test_an_exception_that_cannot_be_pickled_becomes_a_one_line_build_error() -> None:
    class Odd(Exception):
        def __init__(self, a: int, b: int) -> None:  # pickle cannot rebuild it from its args
            super().__init__(f"odd {a}{b}")

    def make():
        raise Odd(1, 2)
        yield

    with ChildStream(make, 30, "test stage") as stream, pytest.raises(BuildError, match="Odd: odd 12"):
        list(stream.items())


def test_a_child_that_dies_ends_the_stream_with_its_exit_code() -> None:
    def make():
        yield 1
        os._exit(3)
        yield 2

    with ChildStream(make, 30, "test stage") as stream:
        with pytest.raises(BuildError, match=r"test stage process ended without finishing \(exit code 3"):
            list(stream.items())


def test_a_child_that_sends_nothing_is_given_up_on_after_the_timeout() -> None:
    def make():
        time.sleep(60)
        yield 1

    start = time.monotonic()
    with ChildStream(make, 1, "test stage") as stream:
        with pytest.raises(BuildError, match="test stage sent nothing for 1 s"):
            list(stream.items())
    assert time.monotonic() - start < 15  # close() stopped the sleeping child too


def test_close_stops_a_child_blocked_on_a_full_pipe_and_one_never_started() -> None:
    def endless():
        while True:
            yield b"x" * 100_000

    stream = ChildStream(endless, 30, "test stage")
    assert next(iter(stream.items())) == b"x" * 100_000
    start = time.monotonic()
    stream.close()
    assert not stream._proc.is_alive() and time.monotonic() - start < 10
    idle = ChildStream(endless, 30, "test stage")  # a build that failed before its scan started
    idle.close()
    assert idle._proc.exitcode == 0


def test_the_child_dies_with_a_killed_parent(tmp_path) -> None:
    """A driver killed with SIGKILL (no close()) must not leave its scan stage behind, even one busy
    scanning (a blocked send would fail on the broken pipe; a slow scan would not)."""
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "child.pid"
    script = f"""
import os, time
from tolclip.curate.child_stream import ChildStream
def make():
    open({str(pid_file)!r}, "w").write(str(os.getpid()))
    yield 1
    time.sleep(120)  # busy scanning a slow source: no send to fail on
    yield 2
stream = ChildStream(make, 30, "test stage")
next(iter(stream.items()))
time.sleep(60)
"""
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # A dead child not yet reaped by init shows as a zombie: gone for our purpose.
        if Path(f"/proc/{child}/stat").read_text().split(") ")[1].startswith("Z"):
            break
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.05)
