"""Verify a shard folder: every sample decodes, and the shards hold exactly what `catalog.csv` says."""

from __future__ import annotations

import csv
import os
import tarfile
from collections import defaultdict
from pathlib import Path

from tolclip.curate.splits import TRAIN_SMALL
from tolclip.data.images import ImageError, load_image
from tolclip.data.shards import decode_taxon, has_tar_end


def check(directory: str | os.PathLike) -> list[str]:
    """Problems found in every `shard-*.tar` under `directory` ([] when all samples decode).

    When the folder holds a build's `catalog.csv`, the shards must also hold exactly the keys the
    catalog puts in them (no sample lost, none extra).
    """
    root = Path(directory)
    shards = sorted(root.rglob("shard-*.tar"))
    if not shards:
        return [f"{root}: no shard-*.tar files"]
    problems: list[str] = []
    found: dict[str, set[str]] = {}
    for shard in shards:
        name = shard.relative_to(root).as_posix()
        found[name] = _check_shard(shard, name, problems)
    if (root / "catalog.csv").is_file():
        problems += _check_against_catalog(root / "catalog.csv", found)
    return problems


def _check_shard(shard: Path, name: str, problems: list[str]) -> set[str]:
    """Append the shard's problems; return the keys it holds (none when it cannot be read)."""
    if not has_tar_end(shard):
        problems.append(f"{name}: truncated shard (no end-of-archive marker)")
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                samples[key][ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        problems.append(f"{name}: unreadable shard ({err.__class__.__name__}: {err})")
        return set()
    if not samples:
        problems.append(f"{name}: empty shard")
    for key, files in samples.items():
        problems += [f"{name} {key}: {p}" for p in _sample_problems(files)]
    return set(samples)


def _sample_problems(files: dict[str, bytes]) -> list[str]:
    problems = []
    if "jpg" not in files:
        problems.append("no jpg")
    else:
        try:
            load_image(files["jpg"])
        except ImageError as err:
            problems.append(f"image {err.reason}")
    if "taxon.json" not in files:
        problems.append("no taxon.json")
        return problems
    try:
        taxon = decode_taxon(files["taxon.json"])
    except (ValueError, TypeError) as err:
        problems.append(f"bad taxon.json ({err})")
        return problems
    if not any(taxon.ranks):
        problems.append("taxon.json has no rank")
    return problems


def _check_against_catalog(catalog: Path, found: dict[str, set[str]]) -> list[str]:
    small_set = f"{TRAIN_SMALL}/"
    expected: dict[str, set[str]] = defaultdict(set)
    with catalog.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            expected[row["shard"]].add(row["key"])
            if row.get("train_small") == "True":
                expected[small_set].add(row["key"])
    # train_small shards are re-cut from the train keys, so they are compared as one set.
    got = {name: keys for name, keys in found.items() if not name.startswith(small_set)}
    small = set().union(*(k for n, k in found.items() if n.startswith(small_set)))
    if small or expected.get(small_set):
        got[small_set] = small
    problems = []
    for name in sorted(set(expected) | set(got)):
        want, have = expected.get(name, set()), got.get(name)
        if have is None:
            problems.append(f"{name}: in catalog.csv ({len(want)} samples) but missing")
        elif want != have:
            problems.append(
                f"{name}: {len(want - have)} catalog sample(s) missing (e.g. {sorted(want - have)[:2]}), "
                f"{len(have - want)} not in catalog.csv (e.g. {sorted(have - want)[:2]})"
            )
    return problems
