"""Where the build's tasks run: in this process, in a multiprocessing pool, or on Ray; one small interface.

`open_executor` gives an `Executor` (a context manager with `workers` and `submit`); `submit` gives a
`Pending` whose `result()` waits at most the executor's timeout and re-raises the task's own exception.
`ordered_map` runs a function over a (possibly endless) iterator with a bounded number of tasks in flight
and yields the results in input order, so what a build writes does not depend on where it ran.

Ray is optional: it is imported only on the Ray path (`pip install 'tolclip[ray]'`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from tolclip.curate.config import BuildError

KINDS = ("local", "ray")
_TIMEOUT_HINT = (
    "a worker may have hung or died (out of memory?); raise build.task_timeout if tasks are this slow"
)
# A TCP probe of a cluster's address before ray.init: an unreachable one fails in seconds, not minutes.
_PROBE_TIMEOUT_S = 10.0


class Pending(Protocol):
    def result(self) -> Any: ...


class Executor(Protocol):
    workers: int

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Pending: ...

    def actors(self, cls: type, n: int) -> list[Any]: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


def _timeout_error(timeout: float, what: str) -> BuildError:
    return BuildError(f"a build task took longer than {timeout:.0f} s ({what}); {_TIMEOUT_HINT}")


def _what(fn: Callable[[Any], Any], where: str) -> str:
    return f"{getattr(fn, '__qualname__', repr(fn))} {where}"


# --- in this process ---------------------------------------------------------------------------------


class _Deferred:
    """A task run when its result is asked for (tasks then run one by one, in order)."""

    def __init__(self, fn: Callable[[Any], Any], arg: Any, timeout: float) -> None:
        self._fn, self._arg, self._timeout = fn, arg, timeout

    def result(self) -> Any:
        start = time.monotonic()
        value = self._fn(self._arg)
        # A task in this process cannot be interrupted; one that ran past the bound still fails, as it
        # would in a worker, so a build behaves the same whatever the worker count.
        if time.monotonic() - start > self._timeout:
            raise _timeout_error(self._timeout, _what(self._fn, "in this process"))
        return value


class _Done:
    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value


class LocalActor:
    """An object in this process, called like a Ray actor: `call(method, *args).result()`."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def call(self, method: str, *args: Any) -> Pending:
        return _Done(getattr(self.obj, method)(*args))


def _local_actors(cls: type, n: int) -> list[Any]:
    """`n` instances of `cls` with state, in this process (a local executor's `actors`)."""
    return [LocalActor(cls()) for _ in range(n)]


class InProcessExecutor:
    """workers == 0: every task runs in this process, at `result()` time."""

    def __init__(self, init: Callable[[Any], None] | None, init_arg: Any, timeout: float) -> None:
        self.workers = 0
        self._timeout = timeout
        if init is not None:
            init(init_arg)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Pending:
        return _Deferred(fn, arg, self._timeout)

    actors = staticmethod(_local_actors)

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


# --- a multiprocessing pool ----------------------------------------------------------------------------

# Set in a pool worker when `init` failed there: its tasks raise it (a raising Pool initializer would
# instead kill the worker, and the pool would restart it forever).
_POOL_INIT_ERROR: list[BaseException] = []


def _init_pool_worker(init: Callable[[Any], None] | None, init_arg: Any) -> None:
    # A forked worker inherits the CLI's SIGTERM handler, which raises: Pool.terminate() then interrupts
    # workers inside the result queue's lock and the pool can hang at exit (see image_worker). A worker
    # must just die on SIGTERM; Ctrl-C is the parent's to handle (no traceback from every worker).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if init is None:
        return
    try:
        init(init_arg)
    except BaseException as err:  # re-raised by every task of this worker
        _POOL_INIT_ERROR.append(err)


def _run_pool_task(fn: Callable[[Any], Any], arg: Any) -> Any:
    if _POOL_INIT_ERROR:
        raise _POOL_INIT_ERROR[0]
    try:
        return fn(arg)
    except Exception as err:
        # An exception the parent cannot unpickle (an __init__ taking other arguments than its args)
        # kills the pool's result thread: every later task would then hang and the exit fail.
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:
            raise BuildError(
                f"a build task raised {type(err).__name__}: {err} (in a worker process; that exception "
                "cannot be sent back as it is)"
            ) from None
        raise


class _PoolPending:
    def __init__(self, result: Any, timeout: float, what: str) -> None:
        self._result, self._timeout, self._what = result, timeout, what

    def result(self) -> Any:
        try:
            return self._result.get(self._timeout)
        except multiprocessing.TimeoutError:
            raise _timeout_error(self._timeout, self._what) from None


class PoolExecutor:
    """workers >= 1 processes (fork on Linux, spawn elsewhere); `submit` is `apply_async`."""

    def __init__(
        self, workers: int, init: Callable[[Any], None] | None, init_arg: Any, timeout: float
    ) -> None:
        self.workers = workers
        self._timeout = timeout
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self._pool = ctx.Pool(workers, initializer=_init_pool_worker, initargs=(init, init_arg))

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Pending:
        result = self._pool.apply_async(_run_pool_task, (fn, arg))
        return _PoolPending(result, self._timeout, _what(fn, "in a worker process"))

    actors = staticmethod(_local_actors)

    def __enter__(self) -> PoolExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        # Every result a caller wants has been collected by now; terminate (SIGTERM, which a worker takes
        # as SIG_DFL) never waits on a task that hung or was abandoned, as close() + join() would.
        self._pool.terminate()
        self._pool.join()


# --- Ray --------------------------------------------------------------------------------------------------

# The init this Ray worker process has run (the object id of the executor's init_arg): once per process.
_RAY_INIT_TOKEN: list[str] = []


def _run_ray_task(fn: Callable[[Any], Any], arg: Any, init: Callable[[Any], None] | None, box: list) -> Any:
    """Runs in a Ray worker: `init(init_arg)` the first time this process sees this executor, then fn."""
    if init is not None:
        ref = box[0]  # in a list, so Ray passes the reference and not the (maybe large) value every task
        if _RAY_INIT_TOKEN != [ref.hex()]:
            import ray

            init(ray.get(ref))
            _RAY_INIT_TOKEN[:] = [ref.hex()]
    return fn(arg)


def _ray_error(err: Exception, what: str) -> BaseException:
    """The exception `result()` raises for what `ray.get` raised (other than its timeout)."""
    import ray.exceptions as rex

    if isinstance(err, rex.RayTaskError) and isinstance(err.cause, BaseException):
        # ray.get raises RayTaskError(ValueError), whose text is the remote traceback: give back the
        # task's own exception (its type and message); result() chains Ray's to it for the traceback.
        return err.cause
    if isinstance(err, rex.UnserializableException):
        # The task's exception could not be rebuilt here (e.g. an __init__ with other arguments).
        lines = [line for line in str(err).splitlines() if line.strip()]
        return BuildError(f"a build task failed in Ray ({what}): {lines[-1] if lines else err}")
    if isinstance(err, rex.RayError):
        first = (str(err).strip().splitlines() or [""])[0]
        return BuildError(f"a build task failed in Ray ({what}): {type(err).__name__}: {first}")
    return err


class _RayPending:
    def __init__(self, ref: Any, executor: RayExecutor, what: str) -> None:
        self._ref, self._executor, self._what = ref, executor, what

    def result(self) -> Any:
        import ray

        timeout = self._executor.timeout
        try:
            return ray.get(self._ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            # Kill it: a cancel without force does not stop a task inside time.sleep or C code.
            ray.cancel(self._ref, force=True)
            raise _timeout_error(timeout, self._what) from None
        except ray.exceptions.RayError as err:
            exc = _ray_error(err, self._what)
            raise exc from (err if exc is getattr(err, "cause", None) else None)
        finally:
            self._executor.outstanding.discard(self._ref)


class _RayActor:
    def __init__(self, handle: Any, executor: RayExecutor, what: str) -> None:
        self._handle, self._executor, self._what = handle, executor, what

    def call(self, method: str, *args: Any) -> Pending:
        ref = getattr(self._handle, method).remote(*args)
        return _RayPending(ref, self._executor, f"{self._what}.{method}")


class RayExecutor:
    """Tasks on Ray (num_cpus=1 each); `init(init_arg)` once per Ray worker process."""

    def __init__(
        self,
        workers: int,
        init: Callable[[Any], None] | None,
        init_arg: Any,
        address: str | None,
        timeout: float,
    ) -> None:
        import ray

        self.timeout = timeout
        self.outstanding: set[Any] = set()
        self._actors: list[Any] = []
        # A Ray this process already runs (a notebook's, a test session's) is used and left running.
        self._owned = False if ray.is_initialized() else _start_ray(ray, workers, address)
        try:
            self.workers = workers if workers >= 1 else max(1, int(ray.cluster_resources().get("CPU", 1)))
            self._init = init
            self._box = [ray.put(init_arg)] if init is not None else []  # once, not with every task
            self._remote = ray.remote(num_cpus=1)(_run_ray_task)
        except BaseException:
            if self._owned:
                ray.shutdown()
            raise

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Pending:
        ref = self._remote.remote(fn, arg, self._init, self._box)
        self.outstanding.add(ref)
        return _RayPending(ref, self, _what(fn, "in a Ray task"))

    def actors(self, cls: type, n: int) -> list[Any]:
        """`n` Ray actors of `cls` (no CPU reserved: they must not starve the tasks), killed on exit."""
        import ray

        remote = ray.remote(num_cpus=0)(cls)
        handles = [remote.remote() for _ in range(n)]
        self._actors += handles
        return [_RayActor(h, self, f"{cls.__qualname__} actor") for h in handles]

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        # Tasks nobody waited for (a build that stopped early) must not keep a shared Ray's CPUs busy.
        for ref in list(self.outstanding):
            ray.cancel(ref, force=True)
        self.outstanding.clear()
        for actor in self._actors:
            ray.kill(actor)
        self._actors.clear()
        self._box.clear()
        if self._owned:
            ray.shutdown()


def _probe(address: str) -> None:
    """Fail fast when nothing listens at a cluster's host:port (ray.init would retry for many minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise BuildError(f"build.ray_address {address!r} is not host:port, ray://host:port or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise BuildError(
            f"cannot reach the Ray cluster at {address}: {err.strerror or err} "
            "(is Ray running there? check build.ray_address)"
        ) from None


def _start_ray(ray: Any, workers: int, address: str | None) -> bool:
    """Connect to `address` or start a local Ray with `workers` CPUs; True: this process started it."""
    local = address in (None, "local")
    if local and workers < 1:
        raise BuildError("build.executor=ray with a local Ray needs build.workers >= 1 (the CPUs it may use)")
    if address not in (None, "local", "auto"):
        _probe(address)
    # One attempt to reach the GCS (about 40 s at most) instead of Ray's default 20 (about 14 minutes):
    # read by ray.init at call time; the user's own setting wins.
    key = "RAY_gcs_server_port_wait_time_s"
    user = os.environ.get(key)
    os.environ[key] = user or "1"
    try:
        options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if local:
            options["num_cpus"] = workers
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = "start a local Ray" if local else f"connect to the Ray cluster at {address}"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BuildError(f"could not {where}: {first}") from None
    finally:
        if user is None:
            os.environ.pop(key, None)
    return True


def check_settings(kind: str, workers: Any, timeout: Any) -> None:
    """A one-line BuildError for an unknown executor, a bad worker count or a bad task timeout."""
    if kind not in KINDS:
        raise BuildError(f"unknown build.executor {kind!r}; known: {', '.join(KINDS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise BuildError(f"build.workers must be an integer >= 0, got {workers!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise BuildError(f"build.task_timeout must be > 0 seconds, got {timeout!r}")


def open_executor(
    kind: str,
    workers: int,
    init: Callable[[Any], None] | None = None,
    init_arg: Any = None,
    ray_address: str | None = None,
    timeout: float = 600.0,
) -> Executor:
    """An executor for the build's tasks; use it as a context manager (its exit stops the workers).

    kind "local": workers == 0 runs tasks in this process, workers >= 1 in a multiprocessing pool;
    kind "ray": on the Ray at `ray_address`, the one this process already runs, or a local one with
    `workers` CPUs. `init(init_arg)` runs once in every worker process before its first task.
    """
    check_settings(kind, workers, timeout)
    if kind == "local":
        if workers == 0:
            return InProcessExecutor(init, init_arg, timeout)
        return PoolExecutor(workers, init, init_arg, timeout)
    try:
        import ray  # noqa: F401 - optional: only this path needs it
    except ImportError:
        raise BuildError("build.executor=ray needs Ray: pip install 'tolclip[ray]'") from None
    return RayExecutor(workers, init, init_arg, ray_address, timeout)


def ordered_map(
    executor: Executor, fn: Callable[[Any], Any], items: Iterable[Any], window: int
) -> Iterator[Any]:
    """`fn` over `items` with at most `window` tasks in flight; results in input order.

    `items` is read lazily, at most `window` ahead of what has been yielded (Pool.imap would read all of
    it in its feeder thread). Tasks still in flight when the caller stops are the executor exit's to end.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    in_flight: deque[Pending] = deque()
    for item in items:
        in_flight.append(executor.submit(fn, item))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()
