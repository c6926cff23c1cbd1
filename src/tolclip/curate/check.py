"""Verify a shard folder: every sample decodes, and the shards hold exactly what `catalog.csv` says.

`check` decodes everything (`tolclip check-shards`); `check_catalog` reads only the tar headers, cheap
enough to end every build. Both report problems as lines and never raise on a damaged shard.
"""

from __future__ import annotations

import csv
import os
import tarfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tolclip.core.hashing import sha256_hex
from tolclip.curate.splits import TRAIN_SMALL
from tolclip.data.images import ImageError, load_image
from tolclip.data.shards import decode_taxon, has_tar_end, ustar_member_names

CATALOG = "catalog.csv"


def check(directory: str | os.PathLike) -> list[str]:
    """Problems found in every `shard-*.tar` under `directory` ([] when all samples decode).

    When the folder holds a build's `catalog.csv`, the shards must also hold exactly the keys the
    catalog puts in them (no sample lost, none extra).
    """
    root = Path(directory)
    shards = _shards(root)
    if not shards:
        return [f"{root}: no shard-*.tar files"]
    problems: list[str] = []
    found = {name: _check_shard(shard, name, problems) for name, shard in shards}
    if (root / CATALOG).is_file():
        problems += _check_against_catalog(root / CATALOG, found)
    return problems


Mapper = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


ShardSummary = tuple[str, int, int, list[str]]


def shard_summaries(directory: str | os.PathLike, mapper: Mapper = map) -> Iterable[ShardSummary]:
    """`shard_summary` of every shard under `directory`, run by `mapper` (a build passes its worker pool,
    which starts listing them at once, while the build still writes its reports)."""
    return mapper(shard_summary, [(str(path), name) for name, path in _shards(Path(directory))])


def check_catalog(directory: str | os.PathLike, summaries: Iterable[ShardSummary] | None = None) -> list[str]:
    """Whether the shards hold exactly the keys `catalog.csv` puts in them, from tar headers only.

    Memory stays per shard, not per sample: each shard's keys are compared as a count and an
    order-free digest; only a shard that disagrees is compared key by key (to name the keys).
    `summaries` are the shards' listings from `shard_summaries`, started earlier (a build lists them in
    its worker pool); without them the shards are listed here.
    """
    root = Path(directory)
    if not (root / CATALOG).is_file():
        return [f"{root}: no {CATALOG}"]
    if summaries is None:
        summaries = shard_summaries(root)
    problems: list[str] = []
    try:
        expected = _catalog_digests(root / CATALOG)
    except (OSError, ValueError, KeyError, IndexError) as err:  # IndexError: a row short of a column
        return [f"{CATALOG}: unreadable ({err.__class__.__name__}: {err})"]
    got: dict[str, list[int]] = {}
    for name, count, digest, shard_problems in summaries:
        problems += shard_problems
        total = got.setdefault(_group(name), [0, 0])
        total[0] += count
        total[1] = (total[1] + digest) % _MOD
    for name in sorted(set(expected) | set(got)):
        if expected.get(name) != got.get(name):
            problems += _check_against_catalog(root / CATALOG, _found_keys(root, name), only=name)
    return problems


def shard_summary(item: tuple[str, str]) -> ShardSummary:
    """(name, key count, order-free key digest, problems) of one shard, from its tar headers."""
    path, name = item
    problems: list[str] = []
    keys = _shard_keys(Path(path), name, problems)
    return name, len(keys), sum(map(_key_digest, keys)) % _MOD, problems


_MOD = 1 << 64


def _key_digest(key: str) -> int:
    return int(sha256_hex(key)[:16], 16)


def _group(shard: str) -> str:
    # train_small shards are re-cut from the train keys, so they are compared as one set.
    small = f"{TRAIN_SMALL}/"
    return small if shard.startswith(small) else shard


def _catalog_digests(catalog: Path) -> dict[str, list[int]]:
    """Shard (train_small: one group) -> [count, digest] of the keys catalog.csv puts there."""
    out: dict[str, list[int]] = {}
    with catalog.open(newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh)
        header = next(rows, [])
        key, shard = header.index("key"), header.index("shard")
        small = header.index("train_small") if "train_small" in header else None
        for row in rows:
            groups = [
                row[shard],
                *([f"{TRAIN_SMALL}/"] if small is not None and row[small] == "True" else []),
            ]
            for group in groups:
                total = out.setdefault(group, [0, 0])
                total[0] += 1
                total[1] = (total[1] + _key_digest(row[key])) % _MOD
    return out


def _found_keys(root: Path, group: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, shard in _shards(root):
        if _group(name) == group:
            found[name] = _shard_keys(shard, name, [])
    return found


def _shards(root: Path) -> list[tuple[str, Path]]:
    # A `.tmp-*` folder is a shard write that never finished, not a shard.
    paths = sorted(p for p in root.rglob("shard-*.tar") if not any(s.startswith(".tmp-") for s in p.parts))
    return [(p.relative_to(root).as_posix(), p) for p in paths]


def _tar_end_problem(shard: Path, name: str) -> list[str]:
    try:
        return [] if has_tar_end(shard) else [f"{name}: truncated shard (no end-of-archive marker)"]
    except OSError as err:
        return [f"{name}: unreadable shard ({err.__class__.__name__}: {err})"]


def _shard_keys(shard: Path, name: str, problems: list[str]) -> set[str]:
    """The sample keys of a shard from its member names (no data read); none when it cannot be read."""
    problems += _tar_end_problem(shard, name)
    try:
        names = ustar_member_names(shard)
    except (ValueError, OSError):  # not one of ours as written: tarfile reads any tar
        try:
            with tarfile.open(shard) as tar:
                names = [m.name for m in tar if m.isfile()]
        except (tarfile.TarError, OSError, EOFError) as err:
            problems.append(f"{name}: unreadable shard ({err.__class__.__name__}: {err})")
            return set()
    return {n.rsplit("/", 1)[-1].partition(".")[0] for n in names}


def _check_shard(shard: Path, name: str, problems: list[str]) -> set[str]:
    """Append the shard's problems; return the keys it holds (none when it cannot be read)."""
    problems += _tar_end_problem(shard, name)
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():  # a build writes regular files only
                    problems.append(f"{name}: odd member {member.name!r} (not a regular file)")
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if not key or not ext:
                    problems.append(f"{name}: odd member {member.name!r} (no key.extension name)")
                elif ext in samples[key]:
                    problems.append(f"{name} {key}: member .{ext} twice")
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
    # Any failure to decode a sample is that sample's problem: check reports, it never crashes.
    problems = []
    if "jpg" not in files:
        problems.append("no jpg")
    else:
        try:
            load_image(files["jpg"])
        except ImageError as err:
            problems.append(f"image {err.reason}")
        except Exception as err:  # e.g. a decompression bomb Pillow refuses
            problems.append(f"image undecodable ({err.__class__.__name__}: {err})")
    if "taxon.json" not in files:
        problems.append("no taxon.json")
        return problems
    try:
        taxon = decode_taxon(files["taxon.json"])
        ranks = taxon.ranks
    except Exception as err:  # valid JSON of the wrong shape fails in many ways
        problems.append(f"bad taxon.json ({err.__class__.__name__}: {err})")
        return problems
    if not any(ranks):
        problems.append("taxon.json has no rank")
    return problems


def _check_against_catalog(catalog: Path, found: dict[str, set[str]], only: str | None = None) -> list[str]:
    """Key-by-key comparison of the catalog with the shards' keys (`only`: of one shard or group)."""
    small_set = f"{TRAIN_SMALL}/"
    expected: dict[str, set[str]] = defaultdict(set)
    try:
        with catalog.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if only in (None, row["shard"]):
                    expected[row["shard"]].add(row["key"])
                if row.get("train_small") == "True" and only in (None, small_set):
                    expected[small_set].add(row["key"])
    except (OSError, ValueError, KeyError) as err:
        return [f"{catalog.name}: unreadable ({err.__class__.__name__}: {err})"]
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
