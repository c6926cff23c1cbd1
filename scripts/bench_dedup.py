"""Time `Deduplicator.add_hashes` as the index grows: mean µs per image in windows of kept images.

Keys, SHA-256 digests and random 64-bit pHashes are made first, then added one by one (all kept: random
hashes are far apart), timed per window. Shows how the near-duplicate query cost grows with the index.
With `--partitions N` the index is a `PartitionedDeduplicator` over N partitions, asked a chunk at a
time as a build does (`--chunk`): in this process, or as Ray actors with `--ray` (a local Ray with N
CPUs). Wall and driver CPU (process_time) per image are printed per window.

    python scripts/bench_dedup.py --count 1000000
    python scripts/bench_dedup.py --count 200000 --partitions 2 --ray
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

from tolclip.curate.dedup import Deduplicator
from tolclip.curate.dedup_partitioned import IndexPartition, PartitionedDeduplicator
from tolclip.curate.executor import open_executor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--partitions", type=int, default=0, help="0: the driver's Deduplicator")
    ap.add_argument("--ray", action="store_true", help="partitions as actors of a local Ray")
    ap.add_argument("--chunk", type=int, default=64, help="images per prefetch (the build's chunk_size)")
    args = ap.parse_args()
    if args.partitions < 1:
        run(args, Deduplicator(6))
        return
    with open_executor("ray" if args.ray else "local", args.partitions if args.ray else 0) as ex:
        run(args, PartitionedDeduplicator(ex.actors(IndexPartition, args.partitions), 6))


def run(args: argparse.Namespace, dedup: Deduplicator | PartitionedDeduplicator) -> None:
    rng = random.Random(args.seed)
    n = args.count
    keys = [f"src_{i:016x}" for i in range(n)]
    digests = [hashlib.sha256(i.to_bytes(8, "little")).hexdigest() for i in range(n)]
    hashes = [rng.getrandbits(64) for _ in range(n)]
    marks = sorted({m for m in (50_000, 250_000, 500_000, 750_000, n) if m <= n})
    start, lap, cpu = 0, time.perf_counter(), time.process_time()
    print(f"{type(dedup).__name__}, partitions {args.partitions}{' on Ray' if args.ray else ''}")
    print(f"{'kept so far':>20} {'us per image':>14} {'driver CPU us':>14}")
    for i in range(n):
        if i % args.chunk == 0:
            dedup.prefetch(zip(digests[i : i + args.chunk], hashes[i : i + args.chunk], strict=True))
        dedup.add_hashes(keys[i], digests[i], hashes[i])
        if i + 1 == marks[0]:
            now, now_cpu = time.perf_counter(), time.process_time()
            per = 1e6 / (i + 1 - start)
            print(
                f"{f'{start:,}-{i + 1:,}':>20} {(now - lap) * per:>14.0f} {(now_cpu - cpu) * per:>14.0f}",
                flush=True,
            )
            start, lap, cpu = i + 1, now, now_cpu
            marks.pop(0)


if __name__ == "__main__":
    main()
