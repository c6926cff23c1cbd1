"""Stable content hashes: sample keys, exact-duplicate detection, cache keys and weight files all use sha256."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def sha256_hex(data: bytes | str) -> str:
    """sha256 hex digest of bytes (or of a string's UTF-8 bytes).

    A file name that is not valid UTF-8 reaches us with surrogate escapes (os.fsdecode); it hashes
    as its original bytes instead of failing.
    """
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """sha256 hex digest of a file, read in chunks (release weights are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts: Any, length: int = 20) -> str:
    """A short stable hash of JSON-able parts (dict keys sorted; other objects by their str())."""
    return sha256_hex(json.dumps(list(parts), sort_keys=True, default=str))[:length]
