"""The Tree-of-Life shard format: one webdataset sample per image (see docs/shards.md).

Writing goes through `ShardWriter` for every producer (synthetic data, curation), so the format
is defined in exactly one place. Reading lives in `datamodule.py`; `decode_taxon` is shared.
"""

from __future__ import annotations

import functools
import json
import logging
import mmap
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tolclip.core.captions import all_captions
from tolclip.core.taxonomy import SpeciesKey, Taxon, species_key

log = logging.getLogger(__name__)

SHARD_PATTERN = "shard-%06d.tar"
TAXON_FILE = "taxon.json"
IMAGE_FILE = "jpg"


@dataclass(frozen=True)
class Sample:
    """One image with its taxon, ready to be written. `image` is encoded JPEG bytes."""

    key: str
    image: bytes
    taxon: Taxon
    source: str = ""
    source_id: str = ""


def to_record(sample: Sample) -> dict[str, object]:
    """The webdataset dict for one sample: image, taxon.json and the ToL-10M text files."""
    if "." in sample.key or "/" in sample.key:
        # webdataset splits keys at the first dot; a dot or slash would corrupt the grouping.
        raise ValueError(f"sample key {sample.key!r} may not contain '.' or '/'")
    taxon_dict, texts = _taxon_files(sample.taxon)
    meta = {**taxon_dict, "source": sample.source, "source_id": sample.source_id}
    return {
        "__key__": sample.key,
        IMAGE_FILE: sample.image,
        TAXON_FILE: json.dumps(meta, ensure_ascii=False).encode("utf-8"),
        **texts,
    }


@functools.lru_cache(maxsize=65536)
def _taxon_files(taxon: Taxon) -> tuple[dict[str, str], dict[str, bytes]]:
    # Many samples share a taxon: build its captions once (they cost as much as the tar writing).
    return taxon.to_dict(), {name: text.encode("utf-8") for name, text in all_captions(taxon).items()}


def decode_taxon(raw: bytes | str | dict) -> Taxon:
    """The taxon of a `taxon.json` member. Raises ValueError (bad JSON, bad UTF-8, not an object)."""
    meta = json.loads(raw) if isinstance(raw, bytes | str) else raw
    if not isinstance(meta, dict):
        # Valid JSON of another shape (a list, a string, null) would fail deep inside Taxon.
        raise ValueError(f"{TAXON_FILE} must hold a JSON object, not {type(meta).__name__}")
    return Taxon.from_dict(meta)


# ------------------------------------------------------------------------------------- tar writing
# Shards are plain POSIX ustar archives, read by webdataset (Python's tarfile) and GNU tar. We
# write the headers ourselves: tarfile builds each one in Python (~10 us), and a sample has ~10
# members, which made shard writing as slow as decoding the image (docs/benchmarks.md).

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar's record size: archives end padded to a multiple of it
_MODE = 0o444


def _header_template() -> tuple[bytes, int]:
    info = tarfile.TarInfo("x")
    info.mode, info.mtime, info.uname, info.gname = _MODE, 0, "", ""
    head = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    head[0:100] = bytes(100)
    head[124:136] = bytes(12)
    head[148:156] = b" " * 8  # the checksum counts its own field as spaces
    return bytes(head), sum(head)


_TEMPLATE, _TEMPLATE_SUM = _header_template()
# The template around the fields that vary (name 0-100, size 124-136, checksum 148-156): a header is
# then one join of seven pieces, half the time of filling a copy of the template.
_OWNER, _MTIME, _REST = _TEMPLATE[100:124], _TEMPLATE[136:148], _TEMPLATE[156:]
_ZEROS = bytes(_BLOCK)


def tar_header(name: str, size: int) -> bytes:
    """The ustar header of a regular file: mode 0444, owner 0, mtime 0 (equal to tarfile's)."""
    raw = name.encode("utf-8")
    if len(raw) > 100 or not raw.isascii():
        # Long or non-ASCII names need a pax extended header; rare here, so let tarfile do it.
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime, info.uname, info.gname = size, _MODE, 0, "", ""
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    checksum = b"%06o\0 " % (_TEMPLATE_SUM + sum(raw) + sum(size_field))
    return b"".join((raw, _ZEROS[: 100 - len(raw)], _OWNER, size_field, _MTIME, checksum, _REST))


def record_blob(record: dict[str, object]) -> bytes:
    """One webdataset record as tar members (header, data, padding each): a shard is their
    concatenation plus the end-of-archive marker, so samples can be encoded anywhere, in any order."""
    key = record["__key__"]
    parts = []
    for ext, data in record.items():
        if ext == "__key__":
            continue
        if not isinstance(data, bytes):
            raise TypeError(f"{key}.{ext}: tar members must be bytes, got {type(data).__name__}")
        parts += (tar_header(f"{key}.{ext}", len(data)), data, _ZEROS[: -len(data) % _BLOCK])
    return b"".join(parts)


class TarShard:
    """One shard file being written: members appended, end-of-archive marker on `close`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self.size = 0
        self.count = 0

    def write(self, record: dict[str, object]) -> None:
        """Write one webdataset record: `__key__` plus extension -> bytes."""
        self.write_blob(record_blob(record))

    def write_blob(self, blob: bytes) -> None:
        """Append one sample's members as `record_blob` built them (perhaps in another process)."""
        self._fh.write(blob)
        self.size += len(blob)
        self.count += 1

    def close(self) -> None:
        self._fh.write(tar_end(self.size))
        self._fh.close()


def tar_end(size: int) -> bytes:
    """The end-of-archive marker after `size` bytes of members: two zero blocks, padded to a record."""
    end = size + 2 * _BLOCK
    return bytes(2 * _BLOCK + (-end) % _RECORD)


def write_shards(
    samples: Iterable[Sample],
    out_dir: str | os.PathLike,
    max_count: int = 10_000,
    max_bytes: int = 1 << 30,
) -> list[Path]:
    """Write samples to `out_dir/shard-000000.tar, ...`; returns the shard paths in order.

    A shard is closed before a sample that would take it past `max_count` samples or past
    `max_bytes` (a shard always holds at least one sample).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    shard: TarShard | None = None
    try:
        for sample in samples:
            blob = record_blob(to_record(sample))
            if shard is not None and (shard.count >= max_count or shard.size + len(blob) > max_bytes):
                shard.close()
                shard = None
            if shard is None:
                shard = TarShard(out / (SHARD_PATTERN % len(written)))
                written.append(shard.path)
            shard.write_blob(blob)
    finally:
        if shard is not None:
            shard.close()
    return written


def ustar_member_names(path: str | os.PathLike) -> list[str]:
    """Member names of a tar of plain ustar file headers (what `TarShard` writes), from the headers alone.

    About ten times faster than `tarfile`, whose per-member Python parsing dominated the check that
    ends every build. Raises ValueError on anything else (a pax or GNU header, a bad checksum, a cut
    file, a damaged header): the caller falls back to `tarfile`, which reads every tar.
    """
    names: list[str] = []
    # Headers read in place from a mapping of the file: no read call per member (a shard has thousands).
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as tar:
        offset, end = 0, len(tar)
        while True:
            if offset + _BLOCK > end:
                raise ValueError("no end-of-archive marker")
            # Only the fields read are sliced out: copying each whole header cost as much as the rest.
            if tar[offset] == 0 and not any(tar[offset : offset + _BLOCK]):
                return names
            # The magic and type, not the checksum: summing 512 bytes per member in Python cost more
            # than the rest of the listing (`check` reads every shard through tarfile, checksums too).
            if (
                tar[offset + 257 : offset + 263] != b"ustar\0"
                or tar[offset + 156] not in _PLAIN_FILE
                or tar[offset + 345] != 0
            ):
                raise ValueError("not a plain ustar file header")
            names.append(tar[offset : offset + 100].split(b"\0", 1)[0].decode("utf-8"))
            size = int(tar[offset + 124 : offset + 135] or b"0", 8)
            offset += _BLOCK + -(-size // _BLOCK) * _BLOCK


_PLAIN_FILE = (ord("0"), 0)  # ustar type flags of a regular file


def has_tar_end(path: str | os.PathLike) -> bool:
    """Whether a local tar ends with its end-of-archive marker (two zero blocks).

    Python's tarfile reads a tar cut at a member boundary as if it ended there, so without this
    check the samples after the cut would vanish without a trace.
    """
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() < 1024:
            return False
        fh.seek(-1024, os.SEEK_END)
        return not any(fh.read(1024))


def shard_spec(paths: list[Path]) -> str:
    """A brace pattern covering consecutive shards written by `write_shards`."""
    if not paths:
        raise ValueError("no shards were written")
    if len(paths) == 1:
        return str(paths[0])
    first, last = paths[0].stem.split("-")[-1], paths[-1].stem.split("-")[-1]
    return str(paths[0].parent / f"shard-{{{first}..{last}}}.tar")


def iter_records(url: str) -> Iterator[dict]:
    """Raw records of one local shard, for tools and tests (training uses the DataModule)."""
    # Imported here: webdataset imports torch (seconds, ~500 MB), which writing shards never needs.
    import webdataset as wds

    yield from wds.WebDataset(url, shardshuffle=False)


def scan_species(urls: Iterable[str]) -> list[SpeciesKey]:
    """The sorted species vocabulary of local shards, from their taxon.json members alone.

    Reads tar headers and skips over the image data, so it costs little next to one epoch. A
    damaged shard contributes what can be read before the damage, as it does in training.
    """
    found: set[SpeciesKey] = set()
    for url in urls:
        if url.startswith("pipe:") or "://" in url:
            raise ValueError(
                f"the species vocabulary is read from local shards before training; {url} is not a local file"
            )
        try:
            with tarfile.open(url, "r:") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith("." + TAXON_FILE):
                        key = species_key(decode_taxon(tar.extractfile(member).read()))
                        if key is not None:
                            found.add(key)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exn:
            log.warning("species vocabulary: %s is damaged, using what was read before it: %s", url, exn)
    return sorted(found)
