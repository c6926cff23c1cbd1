"""Stable content hashes: sample keys, exact-duplicate detection and cache keys all use sha256."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def sha256_hex(data: bytes | str) -> str:
    """sha256 hex digest of bytes (or of a string's UTF-8 bytes).

    A file name that is not valid UTF-8 reaches us with surrogate escapes (os.fsdecode); it hashes
    as its original bytes instead of failing.
    """
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def fingerprint(*parts: Any, length: int = 20) -> str:
    """A short stable hash of JSON-able parts (dict keys sorted; other objects by their str())."""
    return sha256_hex(json.dumps(list(parts), sort_keys=True, default=str))[:length]
