"""Within-dataset dedup with the near-duplicate index spread over partitions (Ray actors on a cluster).

`Deduplicator` keeps every kept image's hashes in the driver, and its query time grows with them. Here
the same multi-index hashing (four 16-bit bands of the 64-bit pHash, `dedup.NearDuplicateIndex`) is
split by band value: the bucket of (band b, value v) lives in partition `owner(b, v)`, with each stored
entry's full pHash and 64 bits of its SHA-256, so a partition answers "which stored entries in my
buckets are within distance d of this hash" by itself. Exact copies are found as in `Deduplicator`:
among the distance-0 matches, by the SHA-256 bits.

Decisions stay those of `Deduplicator`, in scan order: a chunk's hashes are sent to the partitions
(one call each, `prefetch`) together with the previous chunk's kept entries; then `add_hashes` decides
each image from the partitions' matches plus the images kept earlier in the same chunk, which the
partitions have not seen yet. Entry numbers grow in scan order, so "nearest, then first kept" picks
the same original. Keys stay in the driver (about 30 bytes per kept image); the hashes, the band
tables and the query work move to the partitions.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from tolclip.curate.dedup import DEFAULT_MAX_DISTANCE, HASH_BITS, hamming

BANDS = 4
_WIDTH = HASH_BITS // BANDS
_MASK = (1 << _WIDTH) - 1
# Every flip of at most one bit of a band (radius max_distance // BANDS = 1 at the default 6).
_FLIPS = np.array([0, *(1 << p for p in range(_WIDTH))], dtype=np.uint64)


def owner(band: np.ndarray, value: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each (band, value) bucket: a multiplicative hash, so neighbours spread out."""
    mixed = (value.astype(np.uint64) * np.uint64(BANDS) + band.astype(np.uint64)) * np.uint64(2654435761)
    return ((mixed >> np.uint64(16)) % np.uint64(partitions)).astype(np.int64)


def band_values(hashes: np.ndarray) -> np.ndarray:
    """(n, BANDS) band values of n 64-bit hashes (band b = bits b*16 .. b*16+15)."""
    shifts = np.arange(BANDS, dtype=np.uint64) * np.uint64(_WIDTH)
    return (hashes[:, None] >> shifts[None, :]) & np.uint64(_MASK)


class IndexPartition:
    """The buckets one partition owns: band tables of slots, and each slot's entry, pHash and SHA bits.

    An entry stored under several of this partition's buckets takes one slot per bucket; matches are
    reported once per (query, entry).
    """

    def __init__(self) -> None:
        self._tables: list[dict[int, array]] = [{} for _ in range(BANDS)]
        self._entry = array("Q")
        self._hash = array("Q")
        self._sha = array("Q")

    def __len__(self) -> int:
        return len(self._entry)

    def step(
        self, inserts: np.ndarray, probes: np.ndarray, query_hashes: np.ndarray, max_distance: int
    ) -> list[tuple[int, int, int, int]]:
        """Store `inserts` (rows of band, value, entry, hash, sha64), then answer `probes` (rows of query,
        band, value): (query, entry, distance, sha64) of every stored entry in those buckets within
        `max_distance` of `query_hashes[query]`. Arrays of uint64, so they travel without pickling."""
        for band, value, entry, h, sha in inserts.tolist():
            slot = len(self._entry)
            self._entry.append(entry)
            self._hash.append(h)
            self._sha.append(sha)
            bucket = self._tables[band].get(value)
            if bucket is None:
                self._tables[band][value] = array("I", (slot,))
            else:
                bucket.append(slot)
        hashes = query_hashes.tolist()
        found: dict[tuple[int, int], tuple[int, int]] = {}
        for query, band, value in probes.tolist():
            bucket = self._tables[band].get(value)
            if bucket is None:
                continue
            qh = hashes[query]
            for slot in bucket:
                d = hamming(qh, self._hash[slot])
                if d <= max_distance:
                    found[(query, self._entry[slot])] = (d, self._sha[slot])
        return [(q, e, d, sha) for (q, e), (d, sha) in found.items()]


class PartitionCaller(Protocol):
    """Calls a method of one partition where it lives; `result()` of the returned object waits."""

    def call(self, method: str, *args: Any) -> Any: ...


class PartitionedDeduplicator:
    """`Deduplicator`'s decisions with the index in `partitions` (see the module docstring).

    Call `prefetch` with the (sha256 hex, pHash) of the next images in the order `add_hashes` will be
    called for them (a chunk); an `add_hashes` with nothing prefetched fetches for itself.
    """

    def __init__(self, partitions: list[PartitionCaller], max_distance: int = DEFAULT_MAX_DISTANCE) -> None:
        if not partitions:
            raise ValueError("at least one partition is needed")
        if max_distance // BANDS > 1:
            raise ValueError(
                f"partitioned dedup supports max_distance up to {2 * BANDS - 1}, not {max_distance}"
            )
        self.max_distance = max_distance
        self._parts = partitions
        self._keys = bytearray()
        self._key_ends = array("Q")
        self._pending: list[tuple[int, int, int]] = []  # kept since the last call: (entry, hash, sha64)
        self._ahead: deque[tuple[int, int, list[tuple[int, int, int]]]] = deque()
        self._chunk: list[tuple[int, int, int]] = []  # kept since the prefetch that is being decided

    def __len__(self) -> int:
        return len(self._key_ends)

    def key(self, entry: int) -> str:
        start = self._key_ends[entry - 1] if entry else 0
        return self._keys[start : self._key_ends[entry]].decode("utf-8")

    def prefetch(self, hashes: Iterable[tuple[str, int]]) -> None:
        """Ask every partition for the matches of these images (and store the entries kept so far)."""
        queries = [(int(digest[:16], 16), h) for digest, h in hashes]
        if not queries and not self._pending:
            return
        matches = self._call(queries)
        # Entries kept after this call (in the chunk being decided now) are unknown to the partitions.
        self._chunk = []
        for i, (sha, h) in enumerate(queries):
            self._ahead.append((sha, h, matches[i]))

    def add_hashes(self, key: str, digest: str, phash: int | Callable[[], int]) -> str | None:
        """As `Deduplicator.add_hashes`: None to keep (and remember) the image, else the original's key."""
        h = phash() if callable(phash) else phash
        sha = int(digest[:16], 16)
        if not self._ahead:
            self.prefetch([(digest, h)])
        qsha, qh, found = self._ahead.popleft()
        if (qsha, qh) != (sha, h):
            raise RuntimeError("add_hashes called out of the prefetched order")
        found = found + self._in_chunk(h)
        exact = sorted(e for e, d, esha in found if d == 0 and esha == sha)
        near = sorted((d, e) for e, d, _ in found if d <= self.max_distance)
        if exact or near:
            return self.key(exact[0] if exact else near[0][1])
        entry = len(self._key_ends)
        self._keys += key.encode("utf-8")
        self._key_ends.append(len(self._keys))
        self._pending.append((entry, h, sha))
        self._chunk.append((entry, h, sha))
        return None

    def _in_chunk(self, h: int) -> list[tuple[int, int, int]]:
        """(entry, distance, sha64) of the entries kept since the last call within reach of `h`."""
        if not self._chunk:
            return []
        kept = np.array(self._chunk, dtype=np.uint64)  # entry, hash, sha64
        distances = np.bitwise_count(kept[:, 1] ^ np.uint64(h))
        close = np.flatnonzero(distances <= max(self.max_distance, 0))
        return [(int(kept[i, 0]), int(distances[i]), int(kept[i, 2])) for i in close]

    def _call(self, queries: list[tuple[int, int]]) -> list[list[tuple[int, int, int]]]:
        """One call per partition: store the pending entries, answer the queries' probes."""
        n = len(self._parts)
        inserts = _routed(self._insert_rows(), 0, n)
        self._pending = []
        qh = np.array([h for _, h in queries], dtype=np.uint64)
        # (query, band, flip) probe values, routed to the partition owning each bucket.
        values = band_values(qh)[:, :, None] ^ _FLIPS[None, None, :]
        bands = np.broadcast_to(np.arange(BANDS, dtype=np.uint64)[None, :, None], values.shape)
        qidx = np.broadcast_to(np.arange(len(queries), dtype=np.uint64)[:, None, None], values.shape)
        probes = _routed(np.stack([qidx, bands, values], axis=-1).reshape(-1, 3), 1, n)
        # Distance 0 at least, as `Deduplicator` queries: exact copies are found whatever max_distance.
        radius = max(self.max_distance, 0)
        pending = [part.call("step", inserts[p], probes[p], qh, radius) for p, part in enumerate(self._parts)]
        matches: list[list[tuple[int, int, int]]] = [[] for _ in queries]
        seen: set[tuple[int, int]] = set()
        for result in pending:
            for q, e, d, sha in result.result():
                if (q, e) not in seen:  # an entry may sit in buckets of several partitions
                    seen.add((q, e))
                    matches[q].append((e, d, sha))
        return matches

    def _insert_rows(self) -> np.ndarray:
        """(band, value, entry, hash, sha64) rows of the entries kept since the last call, one per band."""
        if not self._pending:
            return np.zeros((0, 5), dtype=np.uint64)
        kept = np.array(self._pending, dtype=np.uint64)  # entry, hash, sha64
        values = band_values(kept[:, 1])
        bands = np.broadcast_to(np.arange(BANDS, dtype=np.uint64), values.shape)
        cols = [bands, values, *(np.broadcast_to(kept[:, i : i + 1], values.shape) for i in range(3))]
        return np.stack(cols, axis=-1).reshape(-1, 5)


def _routed(rows: np.ndarray, band_column: int, partitions: int) -> list[np.ndarray]:
    """`rows` split by the partition owning their (band, value) bucket (columns `band_column` and the
    next), each part in the rows' order."""
    owners = owner(rows[:, band_column], rows[:, band_column + 1], partitions)
    order = np.argsort(owners, kind="stable")
    return np.split(rows[order], np.cumsum(np.bincount(owners, minlength=partitions))[:-1])
