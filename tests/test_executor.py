"""The build's executors (tolclip.curate.executor): in this process, a local process pool and Ray behave
the same: results in input order, input read lazily, init reaching every worker, a task's own exception
coming back, a task past the timeout stopping with a BuildError, and a bounded exit.

The Ray cases are marked `ray` (`make test-ray`); they share the session's local Ray (`ray_local`).
"""

from __future__ import annotations

import importlib.util
import itertools
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tolclip.curate.config import BuildError
from tolclip.curate.executor import open_executor, ordered_map

from executor_tasks import (
    Tally,
    TwoArgs,
    build_error,
    fail_on_3,
    failing_init,
    inits_seen,
    raise_two_args,
    record_init,
    sleep,
    square,
    square_unevenly,
)
from helpers import REPO, time_limit

HAVE_RAY = importlib.util.find_spec("ray") is not None
NO_RAY = "Ray is not installed: pip install -e '.[ray]' (make test-ray does)"

EXECUTORS = [
    pytest.param(("local", 0), id="local-0"),
    pytest.param(("local", 2), id="local-2"),
    pytest.param(("ray", 2), id="ray-2", marks=pytest.mark.ray),
]


@pytest.fixture(params=EXECUTORS)
def open_(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """open_executor for the parameter's kind and workers; other arguments by keyword."""
    kind, workers = request.param
    if kind == "ray":
        request.getfixturevalue("ray_local")

    def opener(**kw: Any) -> Any:
        return open_executor(kind, workers, **kw)

    opener.kind, opener.workers = kind, workers  # type: ignore[attr-defined]
    return opener


def test_ordered_map_keeps_input_order(open_: Callable[..., Any]) -> None:
    with time_limit(120, "ordered_map"), open_() as ex:
        assert ex.workers == open_.workers
        got = list(ordered_map(ex, square_unevenly, range(12), window=3))
    assert got == [i * i for i in range(12)]


def test_init_runs_once_in_every_worker(open_: Callable[..., Any]) -> None:
    token = uuid.uuid4().hex
    with time_limit(120, "init"), open_(init=record_init, init_arg=token) as ex:
        seen = list(ordered_map(ex, inits_seen, range(8), window=4))
    for pid, inits in seen:
        assert inits.count(token) == 1, f"worker {pid} ran init {inits.count(token)} times"
    pids = {pid for pid, _ in seen}
    if open_.workers == 0:
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids


def test_a_tasks_exception_comes_back_as_itself(open_: Callable[..., Any]) -> None:
    with time_limit(120, "exceptions"), open_() as ex:
        with pytest.raises(ValueError) as err:
            list(ordered_map(ex, fail_on_3, range(8), window=3))
        # Its own type (not Ray's RayTaskError(ValueError)) and message (not a remote traceback).
        assert type(err.value) is ValueError
        assert str(err.value) == "bad item 3"
        with pytest.raises(BuildError) as err:
            ex.submit(build_error, 5).result()
        assert type(err.value) is BuildError
        assert str(err.value) == "item 5 is bad"


def test_an_exception_that_cannot_cross_processes_is_a_build_error(open_: Callable[..., Any]) -> None:
    with time_limit(120, "unpicklable exception"), open_(timeout=60) as ex:
        if open_.workers == 0:
            with pytest.raises(TwoArgs, match="1/2"):
                ex.submit(raise_two_args, 1).result()
        else:
            with pytest.raises(BuildError, match=r"TwoArgs: 1/2"):
                ex.submit(raise_two_args, 1).result()
        # The pool (its result thread) survived it.
        assert ex.submit(square, 5).result() == 25


def test_input_is_read_lazily(open_: Callable[..., Any]) -> None:
    consumed = 0

    def counting() -> Iterator[int]:
        nonlocal consumed
        # Large enough that reading it all shows (a build's input can be millions of images).
        for i in range(100_000):
            consumed += 1
            yield i

    window = 4
    with time_limit(120, "lazy input"), open_() as ex:
        results = ordered_map(ex, square, counting(), window)
        for i, value in enumerate(itertools.islice(results, 20)):
            assert value == i * i
            assert consumed <= i + 1 + window, f"read {consumed} items to yield item {i}"


def test_a_task_past_the_timeout_stops_with_build_error(open_: Callable[..., Any]) -> None:
    # In this process a task cannot be interrupted: it fails once it returns, late. A worker's is waited
    # for `timeout` only (a bound with room for a Ray worker process to start).
    timeout, seconds = (0.5, 1.5) if open_.workers == 0 else (5.0, 600)
    with time_limit(120, "task timeout"), open_(timeout=timeout) as ex:
        with pytest.raises(BuildError, match=r"a build task took longer than \d+ s \(sleep .*task_timeout"):
            ex.submit(sleep, seconds).result()
        # The executor still works after one task timed out (the Ray task was cancelled, its CPU freed).
        assert ex.submit(square, 3).result() == 9


def test_an_init_error_reaches_the_tasks(open_: Callable[..., Any]) -> None:
    with time_limit(120, "init error"), pytest.raises(RuntimeError, match="init failed: x"):
        # In this process init runs on open; in a pool or on Ray every task raises it (no endless restarts).
        with open_(init=failing_init, init_arg="x") as ex:
            ex.submit(square, 1).result()


def test_pool_exit_does_not_wait_for_abandoned_tasks() -> None:
    with time_limit(60, "pool exit"):
        with open_executor("local", 2) as ex:
            ex.submit(sleep, 600)
            assert ex.submit(square, 2).result() == 4
        # terminate(): the hung worker is gone, nothing left behind.
        assert multiprocessing.active_children() == []


@pytest.mark.parametrize(
    ("kind", "workers", "message"),
    [
        ("spark", 2, "unknown build.executor 'spark'; known: local, ray"),
        ("local", -1, "build.workers must be an integer >= 0, got -1"),
        ("local", "two", "build.workers must be an integer >= 0, got 'two'"),
    ],
)
def test_bad_settings_are_one_line_errors(kind: str, workers: int, message: str) -> None:
    with pytest.raises(BuildError) as err:
        open_executor(kind, workers)
    assert str(err.value) == message


def test_ray_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(BuildError, match=r"build.executor=ray needs Ray: pip install 'tolclip\[ray\]'"):
        open_executor("ray", 2)


@pytest.mark.ray
def test_ray_uses_the_running_instance_and_leaves_it_running(ray_local: Any) -> None:
    with time_limit(120, "ray exit"):
        with open_executor("ray", 0) as ex:
            assert ex.workers == 2  # workers=0 on a running Ray: its CPUs
            ex.submit(sleep, 600)  # abandoned: cancelled at exit
            assert ex.submit(square, 4).result() == 16
        assert ray_local.is_initialized()
        # The abandoned task was cancelled: both CPUs come free (Ray reports it a moment later).
        while ray_local.available_resources().get("CPU", 0) < 2:
            time.sleep(0.2)


def _run_python(code: str, timeout: float) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (no Ray started in it yet), bounded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
def test_ray_unreachable_address_fails_fast() -> None:
    proc = _run_python(
        """
        from tolclip.curate.config import BuildError
        from tolclip.curate.executor import open_executor
        try:
            open_executor("ray", 2, ray_address="127.0.0.1:1")
        except BuildError as err:
            print("BuildError:", err)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("BuildError: cannot reach the Ray cluster at 127.0.0.1:1: ")
    assert len(proc.stdout.strip().splitlines()) == 1


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
def test_ray_address_that_is_not_ray_fails_within_a_bound() -> None:
    # Something listens there, but no Ray: ray.init's own default retries for about 14 minutes.
    proc = _run_python(
        """
        import socket
        from tolclip.curate.config import BuildError
        from tolclip.curate.executor import open_executor
        server = socket.create_server(("0.0.0.0", 0))
        try:
            open_executor("ray", 2, ray_address=f"127.0.0.1:{server.getsockname()[1]}")
        except BuildError as err:
            print("BuildError:", err)
        """,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("BuildError: could not connect to the Ray cluster at 127.0.0.1:")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
def test_ray_local_instance_is_started_and_shut_down() -> None:
    proc = _run_python(
        """
        import ray
        from tolclip.curate.executor import open_executor, ordered_map
        from tolclip.curate.dedup import content_hash
        with open_executor("ray", 1) as ex:
            print(list(ordered_map(ex, content_hash, [b"a", b"b"], window=2)) == [content_hash(b"a"),
                  content_hash(b"b")])
        print(ray.is_initialized())
        """,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "False"]


@pytest.mark.parametrize(
    "kind",
    ["local", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)])],
)
def test_actors_keep_their_state_between_calls_in_order(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "ray":
        request.getfixturevalue("ray_local")
    with time_limit(120, "actors"), open_executor(kind, 1) as ex:
        first, second = ex.actors(Tally, 2)
        pending = [first.call("add", 1), second.call("add", 10), first.call("add", 2)]
        results = [p.result() for p in pending]
    assert [seen for _, seen in results] == [[1], [10], [1, 2]]
    pids = {pid for pid, _ in results}
    assert (pids == {os.getpid()}) is (kind == "local")  # a local executor keeps them in this process
