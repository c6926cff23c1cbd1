"""The data layer's user-facing error, in a module of its own so that the CLI can catch it without
importing torch (the stream that raises it does)."""

from __future__ import annotations


class DataError(RuntimeError):
    """A stream that cannot give usable samples: one line naming the shards and the reasons."""

    def __init__(self, message: str) -> None:
        # The DataLoader re-raises a worker's exception in the main process as
        # DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...").
        # Keep our own line as the message; the worker's traceback stays beside it.
        self.worker_traceback = ""
        if message.startswith("Caught DataError"):
            self.worker_traceback = message
            last = [line for line in message.splitlines() if line.strip()][-1]
            message = last.split("DataError: ", 1)[-1]
        super().__init__(message)
