"""Time `Deduplicator.add_hashes` as the index grows: mean µs per image in windows of kept images.

Keys, SHA-256 digests and random 64-bit pHashes are made first, then added one by one (all kept: random
hashes are far apart), timed per window. Shows how the near-duplicate query cost grows with the index.

    python scripts/bench_dedup.py --count 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

from tolclip.curate.dedup import Deduplicator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    n = args.count
    keys = [f"src_{i:016x}" for i in range(n)]
    digests = [hashlib.sha256(i.to_bytes(8, "little")).hexdigest() for i in range(n)]
    hashes = [rng.getrandbits(64) for _ in range(n)]
    marks = sorted({m for m in (50_000, 250_000, 500_000, 750_000, n) if m <= n})
    dedup = Deduplicator(6)
    start, lap = 0, time.perf_counter()
    print(f"{'kept so far':>20} {'us per image':>14}")
    for i in range(n):
        dedup.add_hashes(keys[i], digests[i], hashes[i])
        if i + 1 == marks[0]:
            now = time.perf_counter()
            print(f"{f'{start:,}-{i + 1:,}':>20} {(now - lap) / (i + 1 - start) * 1e6:>14.0f}", flush=True)
            start, lap = i + 1, now
            marks.pop(0)


if __name__ == "__main__":
    main()
