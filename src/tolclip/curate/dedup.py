"""Duplicates and evaluation leakage: exact (sha256 of the file bytes) and near (64-bit pHash).

* `content_hash` finds byte-identical files; `perceptual_hash` + `hamming` find the same photo
  re-encoded, resized or converted. pHash does not catch crops, flips or rotations: those count as
  distinct images here.
* `NearDuplicateIndex` answers "which stored hashes are within distance d" without a scan
  (multi-index hashing), fast enough for 100k+ hashes.
* `EvalExclusion` says why a training image must be dropped because it leaks an evaluation image.
* `Deduplicator` keeps the first of each duplicate group of a stream.

The default threshold `DEFAULT_MAX_DISTANCE` comes from the shared data (see the constant).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable
from itertools import combinations

import numpy as np
from PIL import Image

from tolclip.core.hashing import sha256_hex
from tolclip.data.images import DEFAULT_MAX_PIXELS, REDUCED_FROM, ImageError, load_image

HASH_BITS = 64
# Measured on ../shared/data (170 images from all five sources, 1,365 for distinct pairs):
# * copies: JPEG q60, 0.5× and 2× resizes, 224×224 squash → distance 0-2 (max 2); grey/CMYK/
#   EXIF-rotated variants of the elephant photo → 0. Only extreme abuse (q30 after 0.5×, on
#   64×64 Tiny ImageNet) reached 6-12.
# * distinct images: 930,930 pairs, minimum 10, 0.1th percentile 18, mean 32 (same-species and
#   white-background butterflies included). The real same-photo pairs the splits contain
#   (mushrooms test/train, butterflies train/test) sit at 0-6.
# Distances are even (32 of the 64 bits are above the median, barring ties: a flat image hashes
# to 0), so 6 sits two steps above the largest measured copy (2) and two below the closest
# distinct pair (10).
# Re-measured when the hash gained its box-reduce step (up to 300 images per source, 1,214 in all;
# the first 170 with the same four copies each): copies 0-4 (the previous hash: 0-4, fewer at 4);
# distinct pairs 0.1th percentile 20 for both, and pairs at <= 6 (same photos across splits) 14 vs 13.
# With 4 bands it costs 4 × 17 dict probes per query (about 60 µs at 100k hashes).
DEFAULT_MAX_DISTANCE = 6

_DCT_SIZE = 32


def content_hash(data: bytes) -> str:
    """sha256 hex digest of the file bytes: equal iff byte-identical (for exact duplicates)."""
    return sha256_hex(data)


def _dct_matrix(n: int) -> np.ndarray:
    # Orthonormal DCT-II as a matrix, so the 2-D DCT is C @ X @ C.T without scipy.
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


_DCT = _dct_matrix(_DCT_SIZE)
_DCT_LOW = _DCT[1:9]  # the rows for coefficients 1..8, all the hash reads


def hash_box_factor(width: int, height: int) -> int:
    """The integer box factor `perceptual_hash` first reduces a width×height image by (< 2: none)."""
    return min(width, height) // (2 * _DCT_SIZE)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash: grey → 32×32 → 2-D DCT → coefficients [1:9, 1:9] → bit = above their median.

    The 8×8 block starts at (1, 1) as in Zauner's original pHash: it keeps 64 low-frequency
    coefficients and excludes the DC term (overall brightness) and the first row/column, which
    carry little but the brightness gradient. Low frequencies survive JPEG re-encoding and resizing.
    Bit 63 (most significant) is coefficient (1, 1); row-major after that.
    """
    # Pillow's BILINEAR widens its triangle kernel when shrinking: smoother than BOX, whose
    # non-integer boxes (e.g. 112 → 32) flipped up to 10 bits for a 0.5× copy; bilinear kept
    # every q60 / 0.5× / 2× copy on the shared data within 2 bits (BICUBIC/LANCZOS: within 4).
    # A big image is first box-averaged by an integer factor (exact and cheap; it keeps the low
    # frequencies the hash reads), so the grey conversion and the resize touch few pixels. An image
    # `load_image` decoded at reduced scale s (chosen to divide the full image's factor f) is reduced
    # by f / s: the same grid as the full decode, so the hash barely moves (docs/curation-at-scale.md).
    factor = hash_box_factor(*image.size)
    reduced = image.info.get(REDUCED_FROM)  # a reduced-scale JPEG decode: use the full image's grid
    if reduced is not None and (full := hash_box_factor(*reduced[:2])) % reduced[2] == 0:
        factor = full // reduced[2]
    if factor >= 2:
        image = image.reduce(factor)
    small = image.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.BILINEAR)
    # tobytes + frombuffer: the same values as np.asarray(small), without its array-interface overhead.
    pixels = np.frombuffer(small.tobytes(), dtype=np.uint8).reshape(_DCT_SIZE, _DCT_SIZE)
    coeffs = (_DCT_LOW @ pixels @ _DCT_LOW.T).ravel()
    middle = np.partition(coeffs, (31, 32))  # the median of 64 values, without np.median's overhead
    bits = coeffs > (middle[31] + middle[32]) / 2
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


class NearDuplicateIndex:
    """Keys by 64-bit hash; `query` returns the keys within a Hamming distance, exactly.

    Multi-index hashing: the 64 bits are split into `bands` disjoint 16-bit bands, each indexed
    in a table band-value → entries. Guarantee (pigeonhole): if two hashes differ in at most d
    bits, at least one band differs in at most floor(d / bands) bits. So probing, in every band,
    all values within that radius of the query's band finds every true match; candidates are then
    checked with the full distance, so there are no false positives either. With 4 bands, d <= 3
    needs exact band look-ups only (radius 0); d <= 7 probes 17 values per band.

    Stored compactly (a build keeps one entry per kept image, millions of them): hashes and the
    band tables' entry numbers in typed arrays, keys as one byte string (with `Deduplicator`'s digests,
    126 bytes per entry measured by RSS over 1M entries: docs/curation-at-scale.md).
    """

    def __init__(self, bands: int = 4) -> None:
        if bands <= 0 or HASH_BITS % bands:
            raise ValueError(f"bands must divide {HASH_BITS}, not {bands}")
        self.bands = bands
        self._width = HASH_BITS // bands
        self._mask = (1 << self._width) - 1
        self._masks: dict[int, tuple[int, ...]] = {}
        # One table for all bands, keyed by band number << width | band value: a query's probes are
        # then one flat list of keys, looked up in one comprehension.
        self._table: dict[int, array] = {}
        self._key_bytes = bytearray()
        self._key_ends = array("Q")
        self._hashes = array("Q")

    def __len__(self) -> int:
        return len(self._hashes)

    def key(self, entry: int) -> str:
        start = self._key_ends[entry - 1] if entry else 0
        return self._key_bytes[start : self._key_ends[entry]].decode("utf-8")

    def _band_keys(self, h: int) -> list[int]:
        width, mask = self._width, self._mask
        return [b << width | (h >> (b * width)) & mask for b in range(self.bands)]

    def add(self, key: str, h: int) -> int:
        """Store a hash under a key; returns its entry number."""
        if not 0 <= h < 1 << HASH_BITS:
            raise ValueError(f"hash must be an unsigned {HASH_BITS}-bit int, not {h}")
        entry = len(self._hashes)
        self._key_bytes += key.encode("utf-8")
        self._key_ends.append(len(self._key_bytes))
        self._hashes.append(h)
        table = self._table
        for band_key in self._band_keys(h):
            found = table.get(band_key)
            if found is None:
                table[band_key] = array("I", (entry,))
            else:
                found.append(entry)
        return entry

    def _flips(self, radius: int) -> tuple[int, ...]:
        """The XOR masks of every band value within `radius` bits (0 first), built once per radius."""
        masks = self._masks.get(radius)
        if masks is None:
            masks = self._masks[radius] = tuple(
                sum(1 << p for p in positions)
                for r in range(radius + 1)
                for positions in combinations(range(self._width), r)
            )
        return masks

    def entries(self, h: int, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[tuple[int, int]]:
        """(distance, entry) of every stored hash within `max_distance`, nearest first, then by
        insertion order (so the result is deterministic)."""
        if max_distance < 0:
            return []
        flips = self._flips(max_distance // self.bands)
        get = self._table.get  # 17 probes per band at the default distance: the query's hot loop
        buckets = [b for k in self._band_keys(h) for f in flips if (b := get(k ^ f)) is not None]
        if not buckets:  # the common case: nothing near
            return []
        if sum(map(len, buckets)) > self.VECTOR_FROM:
            return self._entries_numpy(h, max_distance, buckets)
        seen: set[int] = set()
        found: list[tuple[int, int]] = []
        for bucket in buckets:
            for entry in bucket:
                if entry not in seen:
                    seen.add(entry)
                    d = hamming(h, self._hashes[entry])
                    if d <= max_distance:
                        found.append((d, entry))
        found.sort()
        return found

    # Candidates per query grow with the index (68 buckets of about entries / 65,536 each): past this
    # many, numpy checks them in one pass instead of a Python loop.
    VECTOR_FROM = 256

    def _entries_numpy(self, h: int, max_distance: int, buckets: list[array]) -> list[tuple[int, int]]:
        entries = np.unique(np.concatenate([np.frombuffer(b, dtype=np.uint32) for b in buckets]))
        hashes = np.frombuffer(self._hashes, dtype=np.uint64)
        distances = np.bitwise_count(hashes[entries] ^ np.uint64(h))
        del hashes  # a live view would stop the array from growing
        keep = distances <= max_distance
        return sorted(zip(distances[keep].tolist(), entries[keep].tolist(), strict=True))

    def matches(self, h: int, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[tuple[str, int]]:
        """(key, distance) of every stored hash within `max_distance`, nearest first."""
        return [(self.key(entry), d) for d, entry in self.entries(h, max_distance)]

    def query(self, h: int, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[str]:
        """Keys of every stored hash within `max_distance`, nearest first."""
        return [self.key(entry) for _, entry in self.entries(h, max_distance)]


class EvalExclusion:
    """The evaluation images a training set must not contain, as content hashes and pHashes.

    `check` gives the reason to exclude a training image, or None. Evaluation files that do not
    decode still guard against exact copies; they are listed in `unreadable`.
    """

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE) -> None:
        self.max_distance = max_distance
        self._exact: dict[str, str] = {}
        self._near = NearDuplicateIndex()
        self.unreadable: list[tuple[str, str]] = []

    @classmethod
    def from_paths(
        cls,
        paths: Iterable[str | os.PathLike],
        max_distance: int = DEFAULT_MAX_DISTANCE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> EvalExclusion:
        exclusion = cls(max_distance=max_distance)
        for path in paths:
            with open(path, "rb") as f:
                data = f.read()
            try:
                image = load_image(data, max_pixels=max_pixels)
            except ImageError as e:
                exclusion.unreadable.append((str(path), e.reason))
                image = None
            exclusion.add(str(path), data, image)
        return exclusion

    def add(self, key: str, data: bytes, image: Image.Image | None) -> None:
        self._exact.setdefault(content_hash(data), key)
        if image is not None:
            self._near.add(key, perceptual_hash(image))

    def __len__(self) -> int:
        return len(self._exact)

    def check(self, data: bytes, image: Image.Image | None) -> str | None:
        """Why this training image (file bytes, decoded image) leaks an eval image, or None."""
        return self.check_hashes(content_hash(data), None if image is None else perceptual_hash(image))

    def check_hashes(self, digest: str, phash: int | None) -> str | None:
        """`check` from precomputed hashes, for callers that need the hashes anyway."""
        exact = self._exact.get(digest)
        if exact is not None:
            return f"exact copy of eval image {exact}"
        if phash is None:
            return None
        found = self._near.matches(phash, self.max_distance)
        if found:
            key, d = found[0]
            return f"near-duplicate (distance {d}) of eval image {key}"
        return None


class Deduplicator:
    """Within-dataset dedup over a stream in a fixed order: the first of a group is kept.

    `add` returns None for an image to keep (and remembers it), or the key of the earlier kept
    image it duplicates (exact bytes first, else the nearest pHash). Duplicates are not indexed,
    so groups do not chain: an image is compared with kept images only. Feed a deterministic
    order (e.g. sorted source ids) to get the same choice every run.

    Byte-identical files decode to the same pixels and so the same pHash: an exact copy is always
    among the distance-0 matches, where 64 bits of its SHA-256 pick it out. So the index needs no
    table of digests (126 bytes per kept image measured at 1M: a build's memory per image).
    """

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE) -> None:
        self.max_distance = max_distance
        self._near = NearDuplicateIndex()
        self._digests = array("Q")  # the first 64 bits of each kept image's SHA-256, by entry

    def __len__(self) -> int:
        return len(self._near)

    def add(self, key: str, data: bytes, image: Image.Image) -> str | None:
        return self.add_hashes(key, content_hash(data), lambda: perceptual_hash(image))

    def prefetch(self, hashes: Iterable[tuple[str, int]]) -> None:
        """Nothing to fetch: the index is here (`PartitionedDeduplicator` asks its partitions ahead)."""

    def add_hashes(self, key: str, digest: str, phash: int | Callable[[], int]) -> str | None:
        """`add` from precomputed hashes (a build keeps hashes, not images); `phash` may be a callable."""
        h = phash() if callable(phash) else phash
        short = int(digest[:16], 16)
        found = self._near.entries(h, max(self.max_distance, 0))
        if found:
            exact = [entry for d, entry in found if d == 0 and self._digests[entry] == short]
            near = [entry for d, entry in found if d <= self.max_distance]
            if exact or near:
                return self._near.key(exact[0] if exact else near[0])
        self._near.add(key, h)
        self._digests.append(short)
        return None
