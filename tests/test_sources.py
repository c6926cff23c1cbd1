"""Source adapters: real messy collections in ../shared/data, and synthetic edge cases."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tolclip.curate.sources import (
    ADAPTERS,
    Problem,
    SourceRecord,
    higher_taxon_from_note,
    image_folder,
    imagenet_wnids,
    inat_json,
    manifest,
    open_source,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = SHARED / "sources"
needs_shared = pytest.mark.skipif(
    not SHARED.exists(), reason="../shared/data not present (only in the dev/CI checkout)"
)


def _scan(kind: str, **kwargs: object) -> tuple[list[SourceRecord], list[Problem]]:
    return open_source(kind, **kwargs).collect()


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def butterflies() -> list[SourceRecord]:
    root = SOURCES / "butterflies-100"
    records, problems = _scan("image_folder", root=root, names_table=root / "names.csv", source="butterflies")
    assert problems == []
    return records


@pytest.fixture(scope="module")
def tiny() -> list[SourceRecord]:
    root = SOURCES / "tiny-imagenet-organisms"
    records, problems = _scan("imagenet_wnids", root=root, wnid_table=root / "wnids.csv", source="tiny")
    assert problems == []
    return records


@needs_shared
def test_butterflies_counts_and_same_class_folders(butterflies: list[SourceRecord]) -> None:
    assert Counter(r.split for r in butterflies) == {"train": 2000, "valid": 490, "test": 500}
    labels = {
        split: {r.label for r in butterflies if r.split == split} for split in ("train", "valid", "test")
    }
    assert (len(labels["train"]), len(labels["valid"]), len(labels["test"])) == (100, 98, 100)
    assert {"GREAT EGGFLY", "SOUTHERN DOGFACE"} <= labels["train"] - labels["valid"]
    # POLYGONIA (train) and QUESTION MARK (valid/test) are one class: only names.csv says so.
    assert "POLYGONIA" in labels["train"] and "QUESTION MARK" in labels["valid"] & labels["test"]
    names = {r.label: r.scientific_name for r in butterflies}
    assert names["POLYGONIA"] == names["QUESTION MARK"] == "Polygonia interrogationis"
    adonis = next(r for r in butterflies if r.label == "ADONIS")
    assert adonis.scientific_name == "Lysandra bellargus" and adonis.common_name == ""
    assert adonis.path.is_absolute() and adonis.path.is_file() and ".." not in adonis.path.parts
    assert names["COPPER TAIL"] == "Lycaenidae"  # family only: kept raw for the resolver
    assert all(r.scientific_name for r in butterflies)
    assert len({r.source_id for r in butterflies}) == len(butterflies)


@needs_shared
def test_tiny_imagenet_counts_names_and_group_fallback(tiny: list[SourceRecord]) -> None:
    assert Counter(r.split for r in tiny) == {"train": 6000, "val": 3000}
    assert len({r.label for r in tiny}) == 60
    by_wnid = {r.label: r for r in tiny}
    goldfish = by_wnid["n01443537"]
    assert (goldfish.scientific_name, goldfish.common_name) == ("Carassius auratus", "goldfish")
    assert goldfish.path.suffix == ".JPEG"
    # Group-only classes take the name after "higher taxon only:", not the first capitalised word.
    assert (by_wnid["n01770393"].scientific_name, by_wnid["n01770393"].ranks) == (
        "Scorpiones",
        {"order": "Scorpiones"},
    )
    assert by_wnid["n01917289"].scientific_name == "Scleractinia"  # note mentions "Maeandra" first
    assert by_wnid["n02268443"].scientific_name == "Odonata"  # note mentions "Anisoptera" first
    assert by_wnid["n07734744"].ranks == {"kingdom": "Fungi"}
    assert by_wnid["n02206856"].scientific_name == "Anthophila" and by_wnid["n02206856"].ranks == {}
    assert by_wnid["n02486410"].ranks == {"genus": "Papio"}
    assert all(r.scientific_name for r in tiny)


@needs_shared
def test_plant_seedlings_has_no_split_level() -> None:
    root = SOURCES / "plant-seedlings"
    records, problems = image_folder(root, root / "names.csv", source="seedlings").collect()
    assert problems == []  # names.csv in root is the table, not a stray file
    assert len(records) == 480 and {r.path.suffix for r in records} == {".png"}
    assert {r.split for r in records} == {""}
    assert Counter(r.label for r in records) == dict.fromkeys(Counter(r.label for r in records), 40)
    assert len({r.scientific_name for r in records}) == 12
    assert next(r for r in records if r.label == "Loose_Silky-bent").scientific_name == "Apera spica-venti"


@needs_shared
def test_mushrooms_inat_json() -> None:
    records: list[SourceRecord] = []
    for split, expected in (("train", 400), ("val", 120), ("test", 133)):
        scan = inat_json(SOURCES / "mushrooms" / f"{split}.json", source="mushrooms")
        got, problems = scan.collect()
        assert problems == [] and len(got) == expected and {r.split for r in got} == {split}
        records += got
    assert {r.ranks["kingdom"] for r in records} == {"Fungi"}
    # Image ids restart in each JSON; file names keep ids unique across the source.
    assert len({r.source_id for r in records}) == len(records)
    red = next(r for r in records if r.ranks["genus"] == "Neoboletus")
    assert red.scientific_name == "Neoboletus erythropus" and red.ranks["species"] == "erythropus"
    assert red.ranks["class"] == "Agaricomycetes" and red.common_name == "scarletina bolete"
    assert "boletus_erythropus" in red.source_id and red.path.is_file()


@needs_shared
def test_camera_trap_manifest_keeps_blanks() -> None:
    root = SOURCES / "camera-trap-edge"
    records, problems = _scan("manifest", table_path=root / "names.csv", source="camtrap")
    assert problems == [] and len(records) == 15
    blanks = sorted(r.source_id for r in records if not r.scientific_name)
    assert blanks == ["blank.jpg", "blank2.jpg", "blank3.jpg", "vehicle.jpg"]
    ocelot = next(r for r in records if r.source_id == "ocelot.jpg")
    assert (ocelot.scientific_name, ocelot.common_name) == ("Leopardus pardalis", "ocelot")


@needs_shared
def test_rare_species_metadata_cls_column(tmp_path: Path) -> None:
    table = SHARED / "taxonomy" / "rare_species_metadata.csv"
    _touch(tmp_path / "2024-03-20" / "12853737_449393_eol-full-size-copy.jpg")
    scan = manifest(
        table, image_root=tmp_path, source="rare", columns={"scientific_name": "class", "source_id": ""}
    )
    records, problems = scan.collect()
    assert len(records) == 1 and len(problems) == 11982  # every row accounted for
    (rec,) = records
    # `cls` is the Linnaean class; `class` in this file is the binomial.
    assert rec.ranks["class"] == "Bivalvia" and rec.scientific_name == "Cyclonaias tuberculata"
    assert rec.ranks["species"] == "tuberculata" and rec.common_name == "purple wartyback"
    assert rec.source_id == "0" and "does not exist" in problems[0].reason


# ------------------------------------------------------------------------------------------ synthetic


def _folder(root: Path) -> Path:
    _touch(root / "train" / "cat" / "b.JPG")
    _touch(root / "train" / "cat" / "a.jpeg")
    _touch(root / "train" / "cat" / ".DS_Store")
    _touch(root / "train" / "cat" / ".hidden.jpg")
    _touch(root / "train" / ".ipynb_checkpoints" / "x.jpg")
    _touch(root / "train" / "cat" / "notes.txt")
    _touch(root / "train" / "dog" / "sub" / "c.Png")
    _touch(root / "test" / "owl" / "d.webp")
    (root / "names.csv").write_text(
        "label,scientific_name,common\ncat,Felis catus,cat\ndog,Canis lupus familiaris,dog\n"
    )
    return root


def test_image_folder_missing_label_hidden_and_stray_files(tmp_path: Path) -> None:
    root = _folder(tmp_path / "src")
    scan = image_folder(root, root / "names.csv", source="pets", common_column="common")
    records, problems = scan.collect()
    assert scan.exhausted
    assert [r.source_id for r in records] == [
        "test/owl/d.webp",
        "train/cat/a.jpeg",
        "train/cat/b.JPG",
        "train/dog/sub/c.Png",
    ]
    owl = records[0]
    assert (owl.label, owl.scientific_name, owl.common_name, owl.split) == ("owl", "", "", "test")
    assert (records[1].scientific_name, records[1].common_name) == ("Felis catus", "cat")
    assert records[3].label == "dog"
    assert problems == [Problem("train/cat/notes.txt", "not an image file (extension)")]


def test_image_folder_split_detection(tmp_path: Path) -> None:
    root = _folder(tmp_path / "src")
    _touch(root / "extra" / "fox" / "e.jpg")
    # "extra" is not a split name, so auto-detection sees labels train/test/extra.
    auto, _ = image_folder(root).collect()
    assert {r.label for r in auto} == {"train", "test", "extra"} and {r.split for r in auto} == {""}
    explicit, problems = image_folder(root, splits=["train", "test"]).collect()
    assert {r.label for r in explicit} == {"cat", "dog", "owl"}
    assert Problem("extra/fox/e.jpg", "not selected: folder not in splits ['train', 'test']") in problems
    assert Problem("names.csv", "file outside any label folder") in problems  # not passed as names_table


def test_image_folder_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        image_folder(tmp_path / "nowhere")
    root = _folder(tmp_path / "src")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        image_folder(root, root / "missing.csv")
    with pytest.raises(ValueError, match=r"names.csv: missing column\(s\) \['latin'\]"):
        image_folder(root, root / "names.csv", scientific_column="latin")
    (root / "ragged.csv").write_text("label,scientific_name\ncat,Felis catus,extra\n")
    with pytest.raises(ValueError, match="ragged.csv, line 2: 3 fields"):
        image_folder(root, root / "ragged.csv")
    (root / "dup.tsv").write_text("label\tscientific_name\ncat\tFelis catus\ncat\tFelis silvestris\n")
    with pytest.raises(ValueError, match="dup.tsv: label 'cat' appears twice"):
        image_folder(root, root / "dup.tsv")


def test_tsv_names_table(tmp_path: Path) -> None:
    root = _folder(tmp_path / "src")
    (tmp_path / "names.tsv").write_text("\ufefflabel\tscientific_name\nowl\tStrix aluco\n")
    records, _ = image_folder(root, tmp_path / "names.tsv").collect()
    assert next(r for r in records if r.label == "owl").scientific_name == "Strix aluco"


def test_imagenet_fallback_column_and_note_parsing(tmp_path: Path) -> None:
    _touch(tmp_path / "n1" / "a.JPEG")
    _touch(tmp_path / "n2" / "b.JPEG")
    (tmp_path / "w.csv").write_text(
        'wnid,words,scientific_name,higher\nn1,"fly, house fly",,Diptera\nn2,moth,,\n'
    )
    records, problems = imagenet_wnids(tmp_path, tmp_path / "w.csv", fallback_column="higher").collect()
    assert problems == []
    assert [(r.label, r.scientific_name, r.common_name) for r in records] == [
        ("n1", "Diptera", "fly"),
        ("n2", "", "moth"),
    ]
    off, _ = imagenet_wnids(tmp_path, tmp_path / "w.csv", fallback_column=None).collect()
    assert off[0].scientific_name == ""
    assert higher_taxon_from_note("flies (WordNet: Muscidae); higher taxon only: Diptera (order)") == (
        "Diptera",
        "order",
    )
    assert higher_taxon_from_note("see WordNet and NCBI: Scorpiones") == ("Scorpiones", "")
    assert higher_taxon_from_note("no latin here") == ("", "")


def _inat(tmp_path: Path, **overrides: object) -> Path:
    _touch(tmp_path / "imgs" / "a.jpg")
    _touch(tmp_path / "imgs" / "b.jpg")
    _touch(tmp_path / "imgs" / "c.jpg")
    _touch(tmp_path / "imgs" / "d.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "imgs/a.jpg"},
            {"id": 2, "file_name": "imgs/b.jpg"},  # no annotation
            {"id": 3, "file_name": "imgs/c.jpg"},  # unknown category
            {"id": 4, "file_name": "imgs/d.jpg"},  # two different categories
            {"id": 5, "file_name": "imgs/gone.jpg"},  # file missing
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7},
            {"id": 11, "image_id": 99, "category_id": 7},  # orphan: unknown image
            {"id": 12, "image_id": 3, "category_id": 42},
            {"id": 13, "image_id": 4, "category_id": 7},
            {"id": 14, "image_id": 4, "category_id": 8},
            {"id": 15, "image_id": 5, "category_id": 7},
        ],
        "categories": [
            {
                "id": 7,
                "name": "Corvus corax",
                "kingdom": "Animalia",
                "class": "Aves",
                "genus": "Corvus",
                "specific_epithet": "corax",
                "common_name": "common raven",
                "family": None,
            },
            {"id": 8, "name": "Passeriformes", "order": "Passeriformes"},
        ],
    } | overrides
    path = tmp_path / "train_mini.json"
    path.write_text(json.dumps(data))
    return path


def test_inat_orphans_and_unlabelled_images(tmp_path: Path) -> None:
    records, problems = inat_json(_inat(tmp_path), source="birds").collect()
    assert [(r.source_id, r.label, r.scientific_name) for r in records] == [
        ("imgs/a.jpg", "Corvus corax", "Corvus corax"),
        ("imgs/b.jpg", "", ""),
    ]
    raven = records[0]
    assert raven.ranks == {"kingdom": "Animalia", "class": "Aves", "genus": "Corvus", "species": "corax"}
    assert (raven.common_name, raven.split, raven.source) == ("common raven", "train_mini", "birds")
    assert records[1].ranks == {} and records[1].split == "train_mini"
    reasons = dict(problems)
    assert reasons["annotations[1]"] == "image_id 99 not in images"
    assert reasons["imgs/c.jpg"] == "category_id 42 not in categories"
    assert reasons["imgs/d.jpg"].startswith("conflicting category_ids")
    assert "does not exist" in reasons["imgs/gone.jpg"]
    assert len(problems) == 4  # 5 images: 2 records + 3 problems, plus the orphan annotation


def test_inat_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        inat_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        inat_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"missing list\(s\) \['categories'\]"):
        inat_json(_inat(tmp_path, categories=None))
    with pytest.raises(ValueError, match=r"images\[0\] lacks \['file_name'\]"):
        inat_json(_inat(tmp_path, images=[{"id": 1}]))
    recs, _ = inat_json(_inat(tmp_path), split="train", image_root=tmp_path).collect()
    assert {r.split for r in recs} == {"train"}


def test_manifest_missing_files_duplicates_and_columns(tmp_path: Path) -> None:
    _touch(tmp_path / "img" / "a.jpg")
    _touch(tmp_path / "img" / "b.jpg")
    (tmp_path / "m.csv").write_text(
        "file,kingdom,class,species,sci,split\n"
        "a.jpg,Animalia,Aves,corax,Corvus corax,train\n"
        "gone.jpg,Animalia,Aves,,,train\n"
        ",,,,,\n"
        "a.jpg,,,,,test\n"
        "b.jpg,,,,,\n"
    )
    scan = manifest(tmp_path / "m.csv", image_root=tmp_path / "img", columns={"scientific_name": "sci"})
    records, problems = scan.collect()
    assert [r.source_id for r in records] == ["a.jpg", "b.jpg"]
    a = records[0]
    assert a.ranks == {"kingdom": "Animalia", "class": "Aves", "species": "corax"}
    assert (a.scientific_name, a.label, a.split, a.path) == (
        "Corvus corax",
        "Corvus corax",
        "train",
        tmp_path / "img" / "a.jpg",
    )
    assert records[1].ranks == {} and records[1].label == ""
    assert [p.item for p in problems] == ["gone.jpg", "row 4", "a.jpg"]
    assert "does not exist" in problems[0].reason and "empty image path" in problems[1].reason
    assert "duplicate source_id" in problems[2].reason
    with pytest.raises(ValueError, match=r"m.csv: missing column\(s\) \['latin'\]"):
        manifest(tmp_path / "m.csv", columns={"scientific_name": "latin"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['genius'\]"):
        manifest(tmp_path / "m.csv", columns={"genius": "sci"})
    (tmp_path / "nopath.csv").write_text("species,genus\nx,y\n")
    with pytest.raises(ValueError, match="nopath.csv: no image path column"):
        manifest(tmp_path / "nopath.csv")


def test_parquet_manifest(tmp_path: Path) -> None:
    _touch(tmp_path / "x" / "1.png")
    table = pa.table(
        {"uri": ["x/1.png", "x/2.png"], "cls": ["Mammalia", None], "genus": ["Vulpes", "Canis"], "id": [7, 8]}
    )
    pq.write_table(table, tmp_path / "m.parquet")
    records, problems = manifest(tmp_path / "m.parquet", columns={"path": "uri", "source_id": "id"}).collect()
    assert [(r.source_id, r.ranks) for r in records] == [("7", {"class": "Mammalia", "genus": "Vulpes"})]
    assert [p.item for p in problems] == ["8"]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(ValueError, match="broken.parquet: cannot read parquet"):
        manifest(tmp_path / "broken.parquet")


def test_registry(tmp_path: Path) -> None:
    assert set(ADAPTERS) == {"image_folder", "inat_json", "imagenet_wnids", "manifest"}
    with pytest.raises(ValueError, match=r"unknown source kind 'folder'; known kinds: \['image_folder'"):
        open_source("folder", root=tmp_path)
    with pytest.raises(ValueError, match="source kind 'image_folder': .*names_tabel"):
        open_source("image_folder", root=tmp_path, names_tabel="x.csv")
    root = _folder(tmp_path / "src")
    config = {
        "kind": "image_folder",
        "root": str(root),
        "names_table": str(root / "names.csv"),
        "source": "pets",
    }
    records, _ = open_source(**config).collect()
    assert len(records) == 4 and {r.source for r in records} == {"pets"}


def test_manifest_streams_and_lists_a_malformed_row(tmp_path: Path) -> None:
    for name in ("1.png", "2.png"):
        _touch(tmp_path / "img" / name)
    (tmp_path / "m.csv").write_text(
        "path,scientific_name\nimg/1.png,Vulpes vulpes\nimg/x.png,a,b\nimg/2.png,Canis lupus\n"
    )
    records, problems = manifest(tmp_path / "m.csv").collect()
    assert [r.source_id for r in records] == ["img/1.png", "img/2.png"]
    assert problems == [Problem("row 3", "row 3: malformed (line 3: 3 fields but the header has 2)")]
