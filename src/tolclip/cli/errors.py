"""One line for a user error of a Hydra command; the full traceback goes to the run folder's log.

Hydra prints every error of a task under a long traceback. The Hydra commands run with
`HYDRA_FULL_ERROR=1` so the exception reaches `run_hydra_command`, which turns a *user* error (a
clear exception we raise for bad input, or a Hydra/OmegaConf config error) into
`tolclip <command>: error: <message>` and exit code 2. Any other exception is a bug and keeps its
traceback. `tolclip <command> --debug ...` or `HYDRA_FULL_ERROR=1` shows every trace.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hydra.errors import HydraException, InstantiationException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from tolclip.cli import run_folder  # registers ${run_id:} (hydra.run.dir) before any Hydra command composes
from tolclip.data.errors import DataError

USER_ERRORS = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    KeyError,
    DataError,  # unusable training or evaluation data: the message names the shards
)
EXIT_USER_ERROR = 2
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
QUOTE_HINT = "wrap the value in double quotes inside single quotes: key='\"value\"'"
# A shell brace range ({000000..000159}) that Hydra's grammar would read as the start of a dict.
_BRACE_RANGE = re.compile(r"\{\d+\.\.\d+\}")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _override_message(err: OverrideParseException) -> str:
    override = err.override or ""
    key = override.split("=", 1)[0].lstrip("+~") if "=" in override else override
    reason = _first_line(str(err)).split(":", 1)[0]  # e.g. LexerNoViableAltException
    return f"{key}: the override {override!r} is not valid Hydra syntax ({reason}); {QUOTE_HINT}"


def _omegaconf_message(err: OmegaConfBaseException) -> str:
    """OmegaConf's first line, with the full key when that line does not already name it."""
    line = _first_line(str(err))
    key = getattr(err, "full_key", None)
    return f"{key}: {line}" if key and str(key) not in line else line


def _config_message(err: Exception) -> str:
    """Hydra's compact errors read well joined onto one line (without the config search path);
    OmegaConf's cause adds the key and the reason."""
    text = str(err).split("Config search path:")[0]
    parts = [" ".join(line.strip() for line in text.splitlines() if line.strip())]
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and _first_line(str(cause)) not in parts[0]:
        parts.append(_first_line(str(cause)))
    return ": ".join(p for p in parts if p)


def user_message(err: BaseException) -> str | None:
    """The one line for a user error, or None for a bug (which keeps its traceback)."""
    if isinstance(err, InstantiationException):
        # "Error in call to target ...": the cause is what the user can act on.
        cause = err.__cause__
        if isinstance(cause, USER_ERRORS + (HydraException, OmegaConfBaseException)):
            return user_message(cause)
        return None
    if isinstance(err, OverrideParseException):
        return _override_message(err)
    if isinstance(err, OmegaConfBaseException):
        return _omegaconf_message(err)
    if isinstance(err, HydraException):
        return _config_message(err)
    if isinstance(err, KeyError):  # str(KeyError) is the repr of its argument
        return _first_line(str(err.args[0]) if err.args else "KeyError")
    if isinstance(err, USER_ERRORS):
        return _first_line(str(err)) or type(err).__name__
    return None


def quote_brace_ranges(args: list[str]) -> list[str]:
    """`key=/d/shard-{000000..000159}.tar` (the README's form, once the shell has removed its quotes)
    becomes `key='/d/shard-{000000..000159}.tar'`: Hydra would otherwise fail on the `{`."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and _BRACE_RANGE.search(value) and value[:1] not in "'\"[{" and "'" not in value:
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


class RememberRunFolder(Callback):
    """A Hydra callback (configs/hydra/default.yaml): Hydra forgets the run's config when the job
    ends, so the folder an error's traceback belongs in is noted when the job starts."""

    folder: Path | None = None
    relaunch_argv: list[str] | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        RememberRunFolder.folder = Path(HydraConfig.get().runtime.output_dir)
        if RememberRunFolder.relaunch_argv is not None:
            # Lightning starts the other DDP ranks as `python <argv[0]> <argv[1:]>` (or `-m <main
            # module>`): now that Hydra has read its overrides, put the subcommand back for them.
            sys.argv = list(RememberRunFolder.relaunch_argv)


def _run_log_dir() -> Path | None:
    """This run's folder, when Hydra got as far as making it."""
    folder = RememberRunFolder.folder
    return folder if folder is not None and folder.is_dir() else None


def report(command: str, err: BaseException, message: str) -> int:
    """Print the one line (after where the traceback went); returns the exit code."""
    run_dir = _run_log_dir()
    if run_dir is not None:
        log = run_dir / "error.log"
        try:
            log.write_text("".join(traceback.format_exception(err)))
            print(f"tolclip {command}: full traceback in {log} (or rerun with --debug)", file=sys.stderr)
        except OSError:
            pass  # a read-only run folder must not hide the error itself
    print(f"tolclip {command}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


class Terminated(BaseException):
    """SIGTERM arrived: a scheduler ending the job (SLURM sends it before SIGKILL), or `kill`.

    A BaseException, like KeyboardInterrupt: the stream's per-sample `except Exception` skips must
    not swallow it as one more unreadable shard."""


def _forward_to_children(signum: int) -> None:
    """Pass the signal on to our child processes (a `pipe:` shard's command, loader workers, DDP
    ranks Lightning started): unwinding waits for them, and a child that never ends would hold the
    run. Linux lists them in /proc; elsewhere this does nothing."""
    for listing in Path("/proc/self/task").glob("*/children"):
        try:
            pids = [int(pid) for pid in listing.read_text().split()]
        except OSError:
            continue
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Raise `Terminated` wherever the main thread is when SIGTERM arrives.

    Lightning's own handler only stops the run at the next batch, which never comes while the
    loader waits on a shard that delivers nothing; raising from the handler ends that wait too.
    Lightning keeps this handler when it installs its own, and restores it after fit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum: int, frame: object) -> None:
        _forward_to_children(signum)
        raise Terminated(f"stopped by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_hydra_command(command: str, function: Callable[[], object], args: list[str]) -> int:
    """Run a `@hydra.main` function with `args` as its command line; one line for a user error."""
    debug = bool(args) and args[0] == "--debug"
    args = quote_brace_ranges(args[1:] if debug else args)
    full = debug or os.environ.get("HYDRA_FULL_ERROR") == "1"
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    argv0 = saved_argv[0] if saved_argv else "tolclip"
    sys.argv = [argv0, *args]  # Hydra parses sys.argv itself
    RememberRunFolder.relaunch_argv = [argv0, command, *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own trace
    run_folder.fresh()
    RememberRunFolder.folder = None  # an earlier run's (in-process callers) is not this one's
    try:
        with terminate_on_sigterm():
            function()
    except Terminated as err:
        print(f"tolclip {command}: {err}; checkpoints written so far are kept", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as err:
        message = None if full else user_message(err)
        if message is None:
            raise
        return report(command, err, message)
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
    return 0
