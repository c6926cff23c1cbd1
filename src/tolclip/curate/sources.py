"""Source adapters: turn one kind of image collection into a stream of uniform `SourceRecord`s.

Adapters only *read*: they keep every name exactly as the source writes it and leave cleaning to
`Taxon.clean` and resolution to the resolver, so that the resolver can report what a source really said.
They never decode images either.

Problem reporting (one design for all adapters): each adapter validates its inputs eagerly (a missing
root, an unreadable or malformed table, an unknown column raises `FileNotFoundError`/`ValueError` naming
the file and the problem) and returns a `SourceScan`. A `SourceScan` is an iterator of records; while it
is consumed it appends a `Problem(item, reason)` to `scan.problems` for every file or row that did *not*
become a record (missing image file, non-image file, broken reference, duplicate id). So once the scan is
exhausted, every input either became a record or is a listed problem: nothing is lost silently, and a bad
row never stops a long curation run. Records whose label has no name (blank camera-trap frames, a label
missing from the names table) are still yielded with empty names: the resolver reports those.

Sources can be built from config through `open_source(kind, **kwargs)` using `ADAPTERS`.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tolclip.core.taxonomy import RANKS

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
# Top-level folder names that mark a split level when every top folder is one of them.
KNOWN_SPLITS: frozenset[str] = frozenset(
    {"train", "training", "val", "valid", "validation", "dev", "test", "testing"}
)


@dataclass(frozen=True)
class SourceRecord:
    """One image as a source describes it; all strings raw, "" when the source says nothing."""

    path: Path  # absolute
    source: str
    source_id: str  # unique within the source (across its splits too)
    label: str  # the class label exactly as the source writes it
    ranks: dict[str, str] = field(default_factory=dict)  # subset of RANKS, key "class" for class
    scientific_name: str = ""
    common_name: str = ""
    split: str = ""


# The reason prefix of a file left out on purpose (a split the config did not ask for): listed, as
# every file is, but not a failure.
NOT_SELECTED = "not selected"


class Problem(NamedTuple):
    """A file or row that did not become a record, and why."""

    item: str  # source id, relative path or "row N"
    reason: str


class SourceScan(Iterator[SourceRecord]):
    """Iterator of records; `problems` lists what was skipped (complete once the scan is exhausted)."""

    def __init__(self, source: str, produce: Callable[[list[Problem]], Iterator[SourceRecord]]) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self._records = produce(self.problems)
        self.exhausted = False

    def __iter__(self) -> SourceScan:
        return self

    def __next__(self) -> SourceRecord:
        try:
            return next(self._records)
        except StopIteration:
            self.exhausted = True
            raise

    def collect(self) -> tuple[list[SourceRecord], list[Problem]]:
        """Consume the rest of the scan; return (records, all problems)."""
        records = list(self)
        return records, self.problems


# --------------------------------------------------------------------------------------------- tables


def _abspath(path: str | os.PathLike[str]) -> Path:
    # abspath normalises "..", unlike Path.absolute, without resolving symlinks like Path.resolve.
    return Path(os.path.abspath(path))


def read_table(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV/TSV (csv module) or parquet (pyarrow) table as (header, rows of raw strings).

    Missing values become "": adapters keep strings raw and let the cleaners decide what is empty.
    A malformed line is a ValueError naming the file and line (small tables: names, wnids).
    """
    header, rows = iter_table(path)
    out = []
    for _, row in rows:
        if isinstance(row, str):
            raise ValueError(f"table {Path(path)}, {row}")
        out.append(row)
    return header, out


TableRows = Iterator[tuple[int, dict[str, str] | str]]


def iter_table(path: str | os.PathLike[str]) -> tuple[list[str], TableRows]:
    """The header now (so a bad file fails at once), then (line number, row) pairs read lazily: a
    manifest of millions of rows is never held whole. A malformed line comes as its error text instead
    of a row, so a streaming reader can list it and go on."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _iter_parquet(path)
    if suffix in (".tsv", ".tab"):
        delimiter = "\t"
    elif suffix in (".csv", ".txt"):
        delimiter = ","
    else:
        raise ValueError(f"table {path}: unsupported extension {suffix!r}; use .csv, .tsv or .parquet")
    # utf-8-sig: spreadsheet exports often start with a BOM that would otherwise stick to the first column.
    fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by the row generator
    reader = csv.reader(fh, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        fh.close()
        raise ValueError(f"table {path} is empty (no header row)")

    def rows() -> TableRows:
        with fh:
            for line in reader:
                if not line:  # blank line
                    continue
                if len(line) != len(header):
                    yield (
                        reader.line_num,
                        f"line {reader.line_num}: {len(line)} fields but the header has {len(header)}",
                    )
                else:
                    yield reader.line_num, dict(zip(header, line, strict=True))

    return header, rows()


def _iter_parquet(path: Path) -> tuple[list[str], TableRows]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"table {path}: cannot read parquet ({err})") from err
    header = list(parquet.schema_arrow.names)

    def rows() -> TableRows:
        n = 1  # numbered like a CSV's lines: the first row is "line 2"
        for batch in parquet.iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                n += 1
                yield n, {k: "" if v is None else str(v) for k, v in row.items()}

    return header, rows()


def _require_columns(path: Path, header: Sequence[str], columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"table {path}: missing column(s) {missing}; it has {list(header)}")


def _load_names(
    path: str | os.PathLike[str], key_column: str, value_columns: Sequence[str]
) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(header, key -> row) for a folder-label or wnid table; a repeated key is a malformed table."""
    path = Path(path)
    header, rows = read_table(path)
    _require_columns(path, header, [key_column, *value_columns])
    names: dict[str, dict[str, str]] = {}
    for row in rows:
        key = row[key_column]
        if key in names and names[key] != row:
            raise ValueError(f"table {path}: {key_column} {key!r} appears twice with different values")
        names[key] = row
    return header, names


# --------------------------------------------------------------------------------------- folder walks


def _rel_id(path: Path, root: Path) -> str:
    """`path` relative to `root` as text every report can hold: a file name that is not valid UTF-8
    keeps its bytes as backslash escapes (`bad-\\xff.png`) instead of failing a CSV, JSON or
    parquet writer later."""
    return os.fsencode(path.relative_to(root).as_posix()).decode("utf-8", "backslashreplace")


def _walk(folder: Path, problems: list[Problem], base: Path, seen: set[str] | None = None) -> Iterator[Path]:
    """Image files under `folder`, sorted, recursive; hidden entries skipped, others reported.

    Folder links are followed once: a link back to a folder already walked (a loop, or a second
    path to the same photos) and a folder that cannot be read are reported, not fatal.
    """
    seen = set() if seen is None else seen
    where = _rel_id(folder, base)
    real = os.path.realpath(folder)
    if real in seen:
        problems.append(Problem(where, "folder link to a folder already walked (loop or duplicate path)"))
        return
    seen.add(real)
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as err:
        problems.append(Problem(where, f"unreadable folder ({err.strerror or err})"))
        return
    for entry in entries:
        if entry.name.startswith("."):  # .DS_Store, ._AppleDouble, .ipynb_checkpoints
            continue
        p = Path(entry.path)
        if entry.is_dir():
            yield from _walk(p, problems, base, seen)
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            yield p
        else:
            problems.append(Problem(_rel_id(p, base), "not an image file (extension)"))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _labelled_files(
    root: Path, splits: Sequence[str] | None, problems: list[Problem], ignore: set[Path]
) -> Iterator[tuple[str, str, Path]]:
    """Yield (split, label, file) for `root/[split/]LABEL/**/*.ext`; stray files become problems."""
    top = _subdirs(root)
    if splits is None:
        # Auto-detect: only when *every* top folder is a split name, so a species folder never
        # gets mistaken for a split.
        split_names = [d.name for d in top] if top and all(d.name in KNOWN_SPLITS for d in top) else []
    else:
        split_names = list(splits)
    level_dirs: list[tuple[str, Path]] = (
        [(s, root / s) for s in split_names if (root / s).is_dir()] if split_names else [("", root)]
    )
    # Files directly in root (or a split folder) have no label folder; folders that are not a
    # requested split hold files we will not yield. Report both rather than drop them.
    for level in [root, *(d for s, d in level_dirs if s)]:
        for f in sorted(level.iterdir()):
            if f.is_file() and not f.name.startswith(".") and _abspath(f) not in ignore:
                problems.append(Problem(_rel_id(f, root), "file outside any label folder"))
    if split_names:
        for d in top:
            if d.name not in split_names:
                for f in _walk(d, problems, root):
                    problems.append(
                        Problem(
                            _rel_id(f, root),
                            f"{NOT_SELECTED}: folder not in splits {split_names}",
                        )
                    )
    for split, level in level_dirs:
        for label_dir in _subdirs(level):
            for f in _walk(label_dir, problems, root):
                yield split, label_dir.name, f


def _check_root(root: str | os.PathLike[str], what: str) -> Path:
    path = _abspath(root)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} root {path} does not exist or is not a folder")
    return path


# ------------------------------------------------------------------------------------------- adapters


def image_folder(
    root: str | os.PathLike[str],
    names_table: str | os.PathLike[str] | None = None,
    source: str = "image_folder",
    label_column: str = "label",
    scientific_column: str = "scientific_name",
    common_column: str | None = None,
    splits: Sequence[str] | None = None,
) -> SourceScan:
    """ImageFolder layout `root/[split/]LABEL/*.ext`, labels mapped to names through `names_table`.

    `splits`: the split folder names; None auto-detects (every top folder a known split name), [] means
    no split level. A label missing from the table still yields records, with empty names.
    """
    root_path = _check_root(root, f"image_folder source {source!r}")
    names: dict[str, dict[str, str]] = {}
    ignore: set[Path] = set()
    if names_table is not None:
        value_columns = [scientific_column] + ([common_column] if common_column else [])
        _, names = _load_names(names_table, label_column, value_columns)
        ignore.add(_abspath(names_table))  # the table may live in root; it is not a stray file

    def produce(problems: list[Problem]) -> Iterator[SourceRecord]:
        for split, label, f in _labelled_files(root_path, splits, problems, ignore):
            row = names.get(label, {})
            yield SourceRecord(
                path=f,
                source=source,
                source_id=_rel_id(f, root_path),
                label=label,
                scientific_name=row.get(scientific_column, ""),
                common_name=row.get(common_column, "") if common_column else "",
                split=split,
            )

    return SourceScan(source, produce)


_HIGHER_TAXON = re.compile(r"higher taxon only:\s*([A-Z][a-z]+)(?:\s*\(([a-z]+)\))?")
# A capitalised, all-lower-case-after word: "Diptera" matches, "WordNet" and "NCBI" do not.
_LATIN_TOKEN = re.compile(r"\b([A-Z][a-z]{2,})\b")


def higher_taxon_from_note(note: str) -> tuple[str, str]:
    """(name, rank) of the group a note names, e.g. "higher taxon only: Diptera (order)".

    Why the marker first: in the real wnids.csv the note often names *other* taxa before the answer
    ("brain corals ...; order only (WordNet: Maeandra); higher taxon only: Scleractinia (order)",
    "dragonflies (Anisoptera; ...); higher taxon only: Odonata (order)"), so the first Latin-looking
    token would be wrong for 6 of 16 group classes. Without the marker we fall back to that token.
    """
    m = _HIGHER_TAXON.search(note)
    if m:
        return m.group(1), m.group(2) or ""
    m = _LATIN_TOKEN.search(note)
    return (m.group(1), "") if m else ("", "")


def imagenet_wnids(
    root: str | os.PathLike[str],
    wnid_table: str | os.PathLike[str],
    source: str = "imagenet",
    fallback_column: str | None = "note",
    splits: Sequence[str] | None = None,
) -> SourceScan:
    """ImageNet layout `root/[split/]WNID/*.JPEG` with a table `wnid,words,scientific_name,rank,note`.

    common name = first entry of `words`. When `scientific_name` is empty (a group above family), the
    name comes from `fallback_column` via `higher_taxon_from_note`; None disables that. `rank`, when it
    is one of RANKS above species, also fills `ranks` (e.g. Papio -> genus).
    """
    root_path = _check_root(root, f"imagenet_wnids source {source!r}")
    table = Path(wnid_table)
    needed = ["wnid", "words", "scientific_name"] + ([fallback_column] if fallback_column else [])
    header, rows = _load_names(table, "wnid", needed)
    has_rank = "rank" in header

    def describe(wnid: str) -> tuple[dict[str, str], str, str]:
        row = rows.get(wnid)
        if row is None:
            return {}, "", ""
        name, rank = row["scientific_name"], row["rank"] if has_rank else ""
        if not name and fallback_column:
            name, rank = higher_taxon_from_note(row[fallback_column])
        ranks = {rank: name} if name and rank in RANKS[:-1] else {}
        return ranks, name, row["words"].split(",")[0].strip()

    cache: dict[str, tuple[dict[str, str], str, str]] = {}

    def produce(problems: list[Problem]) -> Iterator[SourceRecord]:
        for split, wnid, f in _labelled_files(root_path, splits, problems, {_abspath(table)}):
            if wnid not in cache:
                cache[wnid] = describe(wnid)
            ranks, name, common = cache[wnid]
            yield SourceRecord(
                path=f,
                source=source,
                source_id=_rel_id(f, root_path),
                label=wnid,
                ranks=dict(ranks),  # a copy each: records must not share a mutable dict
                scientific_name=name,
                common_name=common,
                split=split,
            )

    return SourceScan(source, produce)


_INAT_RANK_FIELDS = {r: r for r in RANKS[:-1]} | {"species": "specific_epithet"}


def _read_inat_json(path: Path) -> dict[str, Any]:
    """The JSON's top-level object, with its `images` and `categories` lists."""
    if not path.is_file():
        raise FileNotFoundError(f"iNat JSON {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"iNat JSON {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"iNat JSON {path}: top level is {type(data).__name__}, expected an object")
    missing = [k for k in ("images", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"iNat JSON {path}: missing list(s) {missing}")
    return data


def _index_inat(path: Path, items: list[Any], key: str, required: Sequence[str]) -> dict[Any, dict[str, Any]]:
    """id -> item of one of the JSON's lists; an item lacking a field or a repeated id is malformed."""
    out: dict[Any, dict[str, Any]] = {}
    for i, item in enumerate(items):
        lacking = [k for k in required if k not in item] if isinstance(item, dict) else list(required)
        if lacking:
            raise ValueError(f"iNat JSON {path}: {key}[{i}] lacks {lacking}")
        if item["id"] in out:
            raise ValueError(f"iNat JSON {path}: duplicate {key} id {item['id']!r}")
        out[item["id"]] = item
    return out


def _categories_by_image(
    annotations: list[Any], images: Mapping[Any, Any], problems: list[Problem]
) -> dict[Any, set[Any]]:
    """image id -> the category ids its annotations give; unusable annotations become problems."""
    by_image: dict[Any, set[Any]] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            problems.append(Problem(f"annotations[{i}]", "lacks image_id or category_id"))
        elif ann["image_id"] not in images:
            problems.append(Problem(f"annotations[{i}]", f"image_id {ann['image_id']!r} not in images"))
        else:
            by_image.setdefault(ann["image_id"], set()).add(ann["category_id"])
    return by_image


def _image_category(
    file_name: str, cats: set[Any], categories: Mapping[Any, dict[str, Any]], problems: list[Problem]
) -> dict[str, Any] | None:
    """The image's category ({} when unlabelled), or None (and a problem) when its label is unusable."""
    if len(cats) > 1:
        problems.append(Problem(file_name, f"conflicting category_ids {sorted(map(str, cats))}"))
        return None
    if not cats:
        return {}
    (cat_id,) = cats
    if cat_id not in categories:
        problems.append(Problem(file_name, f"category_id {cat_id!r} not in categories"))
        return None
    return categories[cat_id]


def _inat_record(f: Path, file_name: str, cat: dict[str, Any], source: str, split: str) -> SourceRecord:
    name = str(cat.get("name") or "")
    genus, epithet = str(cat.get("genus") or ""), str(cat.get("specific_epithet") or "")
    return SourceRecord(
        path=f,
        source=source,
        source_id=file_name,
        label=name,
        ranks={r: str(cat[k]) for r, k in _INAT_RANK_FIELDS.items() if cat.get(k) not in (None, "")},
        scientific_name=f"{genus} {epithet}" if genus and epithet else name,
        common_name=str(cat.get("common_name") or ""),
        split=split,
    )


def inat_json(
    json_path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    source: str = "inat",
    split: str | None = None,
) -> SourceScan:
    """iNaturalist-2021 competition JSON; `file_name` is relative to `image_root` (default: the JSON's folder).

    Decisions: an image with no annotation is yielded unlabelled (empty label and names; iNat's
    public_test.json is like that, and the resolver reports it). An annotation whose image is unknown,
    an image whose category is unknown, conflicting annotations, and missing files are problems: a wrong
    or dangling label is worse than none. `source_id` is `file_name` because image ids restart at 0 in
    each split's JSON. `split` defaults to the file's stem ("train", "val", "train_mini").
    """
    path = _abspath(json_path)
    data = _read_inat_json(path)
    base = _abspath(image_root) if image_root is not None else path.parent
    split_name = path.stem if split is None else split
    images = _index_inat(path, data["images"], "images", ["id", "file_name"])
    categories = _index_inat(path, data["categories"], "categories", ["id"])
    annotations = data.get("annotations") or []
    if not isinstance(annotations, list):
        raise ValueError(f"iNat JSON {path}: annotations is not a list")

    def produce(problems: list[Problem]) -> Iterator[SourceRecord]:
        by_image = _categories_by_image(annotations, images, problems)
        for image_id, image in images.items():
            file_name = str(image["file_name"])
            cat = _image_category(file_name, by_image.get(image_id, set()), categories, problems)
            if cat is None:
                continue
            f = _abspath(base / file_name)
            if not f.is_file():
                problems.append(Problem(file_name, f"image file {f} does not exist"))
                continue
            yield _inat_record(f, file_name, cat, source, split_name)

    return SourceScan(source, produce)


# Default table columns per field; `columns` overrides them. `cls` comes before `class` because
# rare_species_metadata.csv has both: `cls` is the Linnaean class, `class` is the binomial label.
_MANIFEST_DEFAULTS: dict[str, tuple[str, ...]] = {
    "path": ("path", "file", "filepath", "file_path", "file_name", "filename", "image", "image_path"),
    **{r: (r,) for r in RANKS if r != "class"},
    "class": ("cls", "class"),
    "scientific_name": ("scientific_name",),
    "common_name": ("common_name",),
    "label": ("label",),
    "source_id": ("source_id",),
    "split": ("split",),
}


def _manifest_columns(table: Path, header: list[str], columns: Mapping[str, str] | None) -> dict[str, str]:
    """field -> table column: the caller's `columns`, then the first present default for the others."""
    colmap = dict(columns or {})
    unknown = sorted(set(colmap) - set(_MANIFEST_DEFAULTS))
    if unknown:
        raise ValueError(
            f"manifest {table}: unknown field(s) {unknown} in columns; known: {list(_MANIFEST_DEFAULTS)}"
        )
    _require_columns(table, header, list(colmap.values()))
    taken = set(colmap.values())
    for fld, candidates in _MANIFEST_DEFAULTS.items():
        if fld not in colmap:
            # A column the caller mapped to another field is not reused as a default.
            found = next((c for c in candidates if c in header and c not in taken), None)
            if found:
                colmap[fld] = found
    if "path" not in colmap:
        raise ValueError(
            f"manifest {table}: no image path column (looked for {list(_MANIFEST_DEFAULTS['path'])}); "
            f"map one with columns={{'path': ...}}; it has {header}"
        )
    return colmap


def manifest(
    table_path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    source: str = "manifest",
    columns: Mapping[str, str] | None = None,
) -> SourceScan:
    """A per-image table (CSV/TSV/parquet) with a path column and any of the ranks and names.

    `columns` maps our fields (path, the seven ranks, scientific_name, common_name, label, source_id,
    split) to table columns; unmapped fields use the first present default name. Paths are relative to
    `image_root` (default: the table's folder). Rows whose file is missing, with an empty path or a
    repeated source id are problems. `label` falls back to the scientific name; `source_id` to the path.
    """
    table = _abspath(table_path)
    header, rows = iter_table(table)
    colmap = _manifest_columns(table, header, columns)
    base = _abspath(image_root) if image_root is not None else table.parent
    base_str = str(base)

    def produce(problems: list[Problem]) -> Iterator[SourceRecord]:
        # Hashes of the ids seen, not the ids: 16 bytes per row of a manifest of any length.
        seen: set[bytes] = set()
        for n, row in rows:
            if isinstance(row, str):
                problems.append(Problem(f"row {n}", f"row {n}: malformed ({row})"))
                continue
            get = {fld: row[col] for fld, col in colmap.items()}
            rel = get["path"]
            sid = get.get("source_id") or rel
            item = sid or f"row {n}"
            if not rel:
                problems.append(Problem(item, f"row {n}: empty image path"))
                continue
            digest = hashlib.blake2b(sid.encode("utf-8", "surrogateescape"), digest_size=16).digest()
            if digest in seen:
                problems.append(Problem(item, f"row {n}: duplicate source_id"))
                continue
            # A string join: a manifest row is the driver's hot loop, and pathlib's `/` costs several µs.
            f = _abspath(os.path.join(base_str, rel))
            if not os.path.isfile(f):
                problems.append(Problem(item, f"row {n}: image file {f} does not exist"))
                continue
            seen.add(digest)
            scientific = get.get("scientific_name", "")
            yield SourceRecord(
                path=f,
                source=source,
                source_id=sid,
                label=get.get("label") or scientific,
                ranks={r: get[r] for r in RANKS if get.get(r)},
                scientific_name=scientific,
                common_name=get.get("common_name", ""),
                split=get.get("split", ""),
            )

    return SourceScan(source, produce)


# ------------------------------------------------------------------------------------------- registry

ADAPTERS: dict[str, Callable[..., SourceScan]] = {
    "image_folder": image_folder,
    "inat_json": inat_json,
    "imagenet_wnids": imagenet_wnids,
    "manifest": manifest,
}


def open_source(kind: str, **kwargs: Any) -> SourceScan:
    """Build a source from config, e.g. `{kind: image_folder, root: ..., names_table: ...}`."""
    if kind not in ADAPTERS:
        raise ValueError(f"unknown source kind {kind!r}; known kinds: {sorted(ADAPTERS)}")
    adapter = ADAPTERS[kind]
    signature = inspect.signature(adapter)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        # A config typo should name the adapter and what it takes, not surface as a bare TypeError.
        raise ValueError(f"source kind {kind!r}: {err}; it takes {list(signature.parameters)}") from err
    return adapter(**kwargs)
