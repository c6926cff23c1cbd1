"""`pipe:` shards with a bound on silence.

A `pipe:CMD` shard is the standard output of a shell command (`pipe:aws s3 cp s3://b/x.tar -`), as
in webdataset. A command that hangs without writing (a stalled download) would hold a loader
forever, so a read that waits longer than `timeout` seconds for the next bytes kills the command
and fails with a clear error, which the stream counts as an unreadable shard. A slow but steady
stream is never cut: the bound is on silence, not on the whole transfer.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import subprocess

import webdataset as wds

DEFAULT_TIMEOUT = 600.0  # seconds without a byte: far above any healthy transfer's pauses


class PipeTimeout(OSError):
    """The command wrote nothing for `timeout` seconds."""


class SilenceBoundedPipe(io.RawIOBase):
    """The stdout of `command` (run by the shell); a read waiting more than `timeout` s fails.

    At the end of its output the command's exit status is checked: a failed command is an
    error (`exit N (read)`, the wording webdataset uses), not a short shard.
    """

    def __init__(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.command, self.timeout = command, timeout
        # shell=True on purpose: a pipe: URL is a shell pipeline the user wrote, as in webdataset.
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, bufsize=0)  # noqa: S602

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], self.timeout)
        if not ready:
            self._stop()
            raise PipeTimeout(f"pipe:{self.command}: no data for {self.timeout:g} s (data.pipe_timeout)")
        data = os.read(fd, len(buffer))
        if not data:
            status = self._wait()
            if status != 0:
                raise OSError(f"pipe:{self.command}: exit {status} (read)")
        buffer[: len(data)] = data
        return len(data)

    def _wait(self) -> int:
        try:
            return self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:  # output closed but the command lingers
            self._stop()
            return self.proc.wait()

    def _stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if not self.closed and self.proc.poll() is None:
            self._stop()  # the reader stopped early (a shuffle, the end of an epoch)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        super().close()


def open_shard(url: str, pipe_timeout: float = DEFAULT_TIMEOUT) -> io.IOBase:
    """A readable stream of one shard: `pipe:` commands bounded on silence, the rest by webdataset."""
    if url.startswith("pipe:"):
        return io.BufferedReader(SilenceBoundedPipe(url[len("pipe:") :], pipe_timeout), buffer_size=1 << 16)
    return wds.gopen(url)
