"""tolclip build-shards: the whole pipeline on self-made sources, resume, check, and the shared data."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tolclip.cli.build import check_main
from tolclip.core.taxonomy import RANKS, Taxon
from tolclip.curate import image_worker, shard_writer, stats
from tolclip.curate.build import build
from tolclip.curate.check import check
from tolclip.curate.config import BuildError
from tolclip.curate.dedup import Deduplicator, content_hash, perceptual_hash
from tolclip.curate.entries import Entry
from tolclip.curate.sources import SourceRecord
from tolclip.curate.splits import assign_split, make_key
from tolclip.curate.stats import CATALOG_COLUMNS, CsvRows, Reports, catalog_tail
from tolclip.data.shards import iter_records

from helpers import MICRO, SMALL_RUN, make_cfg

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

SPECIES = {
    "corvus": "Corvus corax",
    "pica": "Pica pica",
    "amanita": "Amanita muscaria",
    "rosa": "Rosa canina",
}


def _image(i: int) -> Image.Image:
    # Smooth random blobs: low-frequency structure, so a re-encoded copy keeps its pHash (flat noise would not).
    rng = np.random.default_rng(i)
    small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    return small.resize((48, 48), Image.Resampling.BICUBIC)


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    _image(i).save(buf, format="PNG")
    return buf.getvalue()


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return make_sources(tmp_path)


def make_sources(tmp_path: Path) -> dict[str, Path]:
    """ImageFolder: 4 named species × 4 images, an unknown label, a corrupt file, a byte copy, an eval copy."""
    root = tmp_path / "src"
    i = 0
    for label in SPECIES:
        (root / label).mkdir(parents=True)
        for n in range(4):
            (root / label / f"{n}.png").write_bytes(_png(i))
            i += 1
    (root / "mystery").mkdir()
    (root / "mystery" / "0.png").write_bytes(_png(100))  # label not in names.csv -> no taxon
    (root / "pica" / "corrupt.jpg").write_bytes(b"this is not a JPEG")
    shutil.copy(root / "corvus" / "0.png", root / "corvus" / "copy_of_0.png")  # byte-identical duplicate
    names = root / "names.csv"
    names.write_text("label,scientific_name\n" + "".join(f"{k},{v}\n" for k, v in SPECIES.items()))
    # The eval set holds a re-encoded (JPEG) copy of amanita/1.png: a near duplicate, not a byte copy.
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    Image.open(root / "amanita" / "1.png").convert("RGB").save(eval_dir / "amanita_eval.jpg", quality=80)
    return {"root": root, "names": names, "eval": eval_dir}


def _config(sources: dict[str, Path], out: Path, **over: object) -> dict:
    cfg = {
        "out_dir": str(out),
        "sources": [
            {
                "kind": "image_folder",
                "source": "mini",
                "root": str(sources["root"]),
                "names_table": str(sources["names"]),
            }
        ],
        "exclude_species": ["Rosa canina"],
        "eval_images": [str(sources["eval"])],
        "resize": {"mode": "squash", "size": 32},
        "splits": {"train": 70, "val": 30},
        "train_small_fraction": 0.5,
        "max_count": 3,
        "workers": 0,  # in this process, so tests can patch the image stage
        "progress": False,
    }
    cfg.update(over)
    return cfg


def test_build_end_to_end(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    stats = build(_config(sources, out, workers=2, chunk_size=2))
    catalog, skipped, excluded = (_read(out / f) for f in ("catalog.csv", "skipped.csv", "excluded.csv"))

    # Every scanned input ends in exactly one report. 4x4 images + mystery + corrupt + copy = 19 (the
    # names table sits in root and is not an input).
    ids = [r["source_id"] for r in catalog + skipped + excluded]
    assert len(ids) == len(set(ids)) == 19 == stats["inputs"]
    reasons = {r["source_id"]: (r["stage"], r["reason"]) for r in skipped + excluded}
    assert reasons["mystery/0.png"][0] == "resolve" and reasons["mystery/0.png"][1].startswith("no taxon")
    assert reasons["pica/corrupt.jpg"] == ("image", "not an image")
    original = make_key("mini", "corvus/0.png")
    assert reasons["corvus/copy_of_0.png"] == ("duplicate", f"duplicate of {original}")
    assert reasons["amanita/1.png"][0] == "eval" and "amanita_eval.jpg" in reasons["amanita/1.png"][1]
    assert {sid for sid, (stage, _) in reasons.items() if stage == "species"} == {
        f"rosa/{n}.png" for n in range(4)
    }
    assert len(catalog) == 11 == stats["images"]

    # Catalog: resolved ranks, deterministic key-hash splits, shard paths that hold exactly these keys.
    assert pq.read_table(out / "catalog.parquet").num_rows == len(catalog)
    corvus = next(r for r in catalog if r["source_id"] == "corvus/1.png")
    assert (corvus["kingdom"], corvus["family"], corvus["genus"], corvus["species"]) == (
        "Animalia",
        "Corvidae",
        "Corvus",
        "corax",
    )
    assert corvus["resolution_status"] == "resolved"
    splits = {"train": 70, "val": 30}
    assert all(r["split"] == assign_split(r["key"], splits) for r in catalog)
    in_shards: dict[str, set[str]] = {}
    for shard in sorted(out.glob("*/shard-*.tar")):
        rel = shard.relative_to(out).as_posix()
        records = list(iter_records(str(shard)))
        assert 0 < len(records) <= 3
        for rec in records:
            meta = json.loads(rec["taxon.json"])
            assert meta["source"] == "mini" and meta["genus"]
            assert Image.open(io.BytesIO(rec["jpg"])).size == (32, 32)
        in_shards[rel] = {rec["__key__"] for rec in records}
    for split in ("train", "val"):
        keys = {r["key"] for r in catalog if r["split"] == split}
        assert set().union(*(v for k, v in in_shards.items() if k.startswith(f"{split}/"))) == keys
    assert all(r["key"] in in_shards[r["shard"]] for r in catalog)
    small = {r["key"] for r in catalog if r["train_small"] == "True"}
    assert small <= {r["key"] for r in catalog if r["split"] == "train"}
    assert set().union(*(v for k, v in in_shards.items() if k.startswith("train_small/")), set()) == small

    # Statistics and reports.
    assert stats["per_kingdom"]["Animalia"]["images"] + stats["per_kingdom"]["Fungi"]["images"] == 11
    assert stats["taxa"]["species"] == 3 and stats["taxa"]["kingdom"] == 2
    assert stats["fraction_all_seven_ranks"] == stats["fraction_complete_to_lowest_rank"] == 1.0
    assert sum(s["images"] for s in stats["per_split"].values()) == 11
    assert json.loads((out / "stats.json").read_text())["images"] == 11
    assert {r["status"] for r in _read(out / "resolution_report.csv")} >= {"resolved", "unresolved"}
    assert not (out / "cache").exists()
    assert check(out) == []


def test_dedup_from_stored_hashes_agrees_with_images() -> None:
    images = [_image(i) for i in range(6)]
    datas = [_png(i) for i in range(6)]
    # a byte copy, a re-encoded near copy, and distinct images
    buf = io.BytesIO()
    images[2].save(buf, format="JPEG", quality=70)
    stream = [
        *zip(datas, images, strict=True),
        (datas[1], images[1]),
        (buf.getvalue(), Image.open(io.BytesIO(buf.getvalue())).convert("RGB")),
    ]
    ref, ours = Deduplicator(), Deduplicator()
    got = [
        (ref.add(f"k{i}", d, im), ours.add_hashes(f"k{i}", content_hash(d), perceptual_hash(im)))
        for i, (d, im) in enumerate(stream)
    ]
    assert [a for a, _ in got] == [b for _, b in got]
    assert [a for a, _ in got][-2:] == ["k1", "k2"]


def _snapshot(out: Path) -> dict[str, bytes]:
    names = ["catalog.csv", "skipped.csv", "excluded.csv", "stats.json"]
    files = {n: (out / n).read_bytes() for n in names}
    files.update({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/shard-*.tar"))})
    return files


def test_resume_gives_identical_output(sources: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    reference = tmp_path / "reference"
    build(_config(sources, reference))
    expected = _snapshot(reference)
    assert len([k for k in expected if k.endswith(".tar")]) >= 4

    # 1. Interrupted in the image stage after 5 images (one image per task, so none is lost with its
    # chunk); the resume decodes only the rest.
    real = image_worker.process_one
    calls: list[str] = []

    def flaky(task):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(task[0])
        return real(task)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(image_worker, "process_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        build(_config(sources, out, chunk_size=1))
    assert not (out / "catalog.csv").exists()
    monkeypatch.setattr(image_worker, "process_one", lambda task: calls.append(task[0]) or real(task))
    build(_config(sources, out, resume=True))
    # 14 files reach the image stage (not rosa, not mystery), each decoded once.
    assert len(calls) == len(set(calls)) == 14
    assert _snapshot(out) == expected

    # 2. Interrupted while closing the third shard (its temp file complete, not yet renamed), with a
    # stray temp file beside it.
    real_close = shard_writer.ShardStream._close
    closed: list[str] = []

    def crash(stream):
        if len(closed) == 2:
            (stream.out / stream.name / ".tmp-crash").write_bytes(b"partial")
            raise RuntimeError("disk full")
        closed.append(stream.rel)
        real_close(stream)

    out2 = tmp_path / "interrupted2"
    monkeypatch.setattr(shard_writer.ShardStream, "_close", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        build(_config(sources, out2))
    assert not (out2 / "catalog.csv").exists()
    finished = {rel: (out2 / rel).stat() for rel in closed}
    assert len(finished) == 2
    monkeypatch.setattr(shard_writer.ShardStream, "_close", real_close)
    build(_config(sources, out2, resume=True))
    for rel, st in finished.items():  # finished shards were kept, not rewritten
        now = (out2 / rel).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert _snapshot(out2) == expected
    assert not list(out2.glob("*/.tmp-*"))

    # A changed config is refused on resume rather than mixed with the old results.
    with pytest.raises(BuildError, match="config changed"):
        build(_config(sources, out2, resume=True, quality=80))


def test_check_finds_corrupt_shard(sources: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    build(_config(sources, out, train_small_fraction=0.0, max_count=100))
    assert check_main([str(out)]) == 0
    shard = out / "train" / "shard-000000.tar"
    data = shard.read_bytes()
    # Corrupt one image's bytes inside the tar (sizes unchanged): the tar still opens, the image does not.
    start = data.index(b"\xff\xd8\xff")
    shard.write_bytes(data[:start] + b"\x00" * 64 + data[start + 64 :])
    val = out / "val" / "shard-000000.tar"
    val.write_bytes(val.read_bytes()[:700])  # truncated tar
    problems = check(out)
    assert any(p.startswith("train/shard-000000.tar ") and "image" in p for p in problems)
    assert any(p.startswith("val/shard-000000.tar") for p in problems)
    assert check_main([str(out)]) == 1
    assert "problem(s)" in capsys.readouterr().out


def test_check_compares_shards_with_the_catalog(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(_config(sources, out, max_count=100))
    assert check(out) == []
    # Drop one catalogued sample from a shard (rewritten whole, so every sample still decodes).
    shard = out / "train" / "shard-000000.tar"
    records = list(iter_records(str(shard)))
    dropped = records[0]["__key__"]
    kept = [{k: v for k, v in r.items() if k == "__key__" or isinstance(v, bytes)} for r in records[1:]]
    shard.unlink()
    from tolclip.data.shards import TarShard

    writer = TarShard(shard)
    for r in kept:
        writer.write(r)
    writer.close()
    problems = check(out)
    assert len(problems) == 1 and problems[0].startswith(
        "train/shard-000000.tar: 1 catalog sample(s) missing"
    )
    assert dropped in problems[0]
    # A shard the catalog names but that is gone.
    (out / "val" / "shard-000000.tar").unlink()
    n_val = sum(1 for r in _read(out / "catalog.csv") if r["split"] == "val")
    assert any(p == f"val/shard-000000.tar: in catalog.csv ({n_val} samples) but missing" for p in check(out))


def test_cli_bad_config_is_one_line(tmp_path: Path, capsys) -> None:
    cmd = [
        sys.executable,
        "-m",
        "tolclip.cli.build",
        f"build.out_dir={tmp_path / 'o'}",
        "build.sources=[{kind: nope, root: x}]",
        f"hydra.run.dir={tmp_path / 'h'}",
    ]
    res = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TOLCLIP_ROOT": str(ROOT)}
    )
    assert res.returncode == 2
    assert "unknown source kind 'nope'" in res.stderr and "Traceback" not in res.stderr
    assert check_main([str(tmp_path)]) == 1 and "no shard" in capsys.readouterr().out


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present (only in the dev/CI checkout)")
def test_shared_sources_subset(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(
            "build/shared_sources",
            overrides=[
                f"paths.root_dir={ROOT}",
                f"build.out_dir={tmp_path / 'out'}",
                "build.limit_per_source=60",
                "build.progress=false",
            ],
        )
    conf = OmegaConf.to_container(cfg.build, resolve=True)
    out = Path(conf["out_dir"])
    stats = build(conf)
    catalog, skipped, excluded = (_read(out / f) for f in ("catalog.csv", "skipped.csv", "excluded.csv"))
    assert len(catalog) + len(skipped) + len(excluded) == stats["inputs"]
    assert set(stats["per_source"]) == {
        "butterflies",
        "tiny_imagenet",
        "plant_seedlings",
        "mushrooms_train",
        "mushrooms_val",
        "camera_trap_edge",
    }
    # The suite's evaluation splits are held out: listed as not selected, not as failures.
    held_out = [r for r in skipped if r["stage"] == "not_selected"]
    assert {r["source_id"].split("/")[0] for r in held_out} == {"test", "val"}
    assert stats["not_selected"] == len(held_out) == 500 + 3000
    assert stats["skipped"] == len(skipped) - len(held_out)
    cam = {r["source_id"]: r for r in skipped + excluded if r["source"] == "camera_trap_edge"}
    assert (
        cam["african_elephants_truncated_file.jpg"]["stage"],
        cam["african_elephants_truncated_file.jpg"]["reason"],
    ) == ("image", "truncated")
    for blank in ("blank.jpg", "blank2.jpg", "blank3.jpg", "vehicle.jpg"):
        assert cam[blank]["stage"] == "resolve" and cam[blank]["reason"].startswith("no taxon")
    # The grey, CMYK and EXIF-rotated elephants are the original photo (pHash distance 0, see tolclip.curate.dedup):
    # they decode fine, and are excluded as duplicates of the original, which is kept.
    kept = {r["source_id"] for r in catalog if r["source"] == "camera_trap_edge"}
    assert "african_elephants.jpg" in kept
    original = make_key("camera_trap_edge", "african_elephants.jpg")
    for variant in ("bw", "cmyk", "with_exif_orientation"):
        row = cam[f"african_elephants_{variant}.jpg"]
        assert (row["stage"], row["reason"]) == ("duplicate", f"duplicate of {original}")
    # The giant armadillo is a Rare Species benchmark species: kept out.
    assert cam["sample_image_oct.jpg"]["stage"] == "species"
    elephant = next(r for r in catalog if r["source_id"] == "african_elephants.jpg")
    assert [elephant[r] for r in RANKS][-2:] == ["Loxodonta", "africana"]
    assert stats["per_kingdom"].keys() >= {"Animalia", "Plantae", "Fungi"}
    assert check(out) == []


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present (only in the dev/CI checkout)")
def test_labels_short_of_seven_ranks_are_reported(tmp_path: Path) -> None:
    # Tiny ImageNet as labelled: a species (goldfish), a genus only (baboon -> Papio), an order only
    # (scorpion -> Scorpiones), and a species whose NCBI lineage has no class (American alligator).
    tiny = SHARED / "sources" / "tiny-imagenet-organisms" / "train"
    rows = [
        ("n01443537", "Carassius auratus", ""),
        ("n02486410", "Papio", ""),
        ("n01770393", "", "Scorpiones"),
        ("n01698640", "Alligator mississippiensis", ""),
    ]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "scientific_name", "order"])
        for wnid, name, order in rows:
            for f in sorted((tiny / wnid).glob("*.JPEG"))[:2]:
                w.writerow([str(f), name, order])
    out = tmp_path / "out"
    stats = build(
        {
            "out_dir": str(out),
            "sources": [{"kind": "manifest", "source": "tiny", "table_path": str(manifest)}],
            "resize": {"mode": "squash", "size": 32},
            "workers": 1,
            "progress": False,
        }
    )
    catalog = _read(out / "catalog.csv")
    assert len(catalog) == 8
    # Only the goldfish has seven ranks; baboon and scorpion are complete down to where their labels stop,
    # the alligator is not (no class), so 2 + 4 of 8 images are complete to their lowest rank.
    assert stats["fraction_all_seven_ranks"] == 2 / 8
    assert stats["fraction_complete_to_lowest_rank"] == 6 / 8
    assert stats["fraction_all_seven_ranks_of_species_labels"] == 2 / 4  # goldfish yes, alligator no
    # min_rank=species keeps only the complete lineages; the rest are excluded with the missing ranks.
    strict = build(
        {
            "out_dir": str(tmp_path / "strict"),
            "min_rank": "species",
            "resize": {"mode": "squash", "size": 32},
            "sources": [{"kind": "manifest", "source": "tiny", "table_path": str(manifest)}],
            "workers": 1,
            "progress": False,
        }
    )
    assert strict["images"] == 2 and strict["fraction_all_seven_ranks"] == 1.0
    reasons = {r["reason"] for r in _read(tmp_path / "strict" / "excluded.csv")}
    assert reasons == {
        "lineage lacks species (min_rank species)",
        "lineage lacks class (min_rank species)",
        "lineage lacks family, genus, species (min_rank species)",
    }
    # Every label short of seven ranks is named in the resolution report with its outcome.
    report = _read(out / "resolution_report.csv")
    short = {tuple(r[x] for x in RANKS) for r in catalog if not all(r[x] for x in RANKS)}
    named = {tuple(r[x] for x in RANKS): r for r in report}
    assert len(short) == 3 and all(named[lin]["status"] == "partial" for lin in short)
    assert {named[lin]["rank"] for lin in short} == {"genus", "order", "species"}
    assert "class" in next(named[lin]["note"] for lin in short if lin[-1] == "mississippiensis")


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present (only in the dev/CI checkout)")
def test_training_runs_on_shards_built_from_shared_sources(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tolclip.training.run import train

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(
            "build/shared_sources",
            overrides=[
                f"paths.root_dir={ROOT}",
                f"build.out_dir={tmp_path / 'built'}",
                "build.limit_per_source=20",
                "build.progress=false",
                "build.splits.train=80",
                "build.splits.val=20",
            ],
        )
    build(OmegaConf.to_container(cfg.build, resolve=True))
    run = make_cfg(
        tmp_path,
        [
            "data=shared_sources",
            f"data.train_shards={tmp_path / 'built'}/train/shard-*.tar",
            f"data.eval_sets.val={tmp_path / 'built'}/val/shard-*.tar",
            *SMALL_RUN,
            "trainer.max_epochs=1",
            *MICRO,
        ],
    )
    out = train(run)
    assert out["trainer"].global_step == 2
    assert {r.rank for r in out["zero_shot"]} >= {"kingdom", "genus", "species"}


def test_held_out_species_form_their_own_split(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    stats = build(_config(sources, out, holdout_species=["Pica pica"], train_small_fraction=0.0))
    catalog = _read(out / "catalog.csv")
    held = {r["source_id"] for r in catalog if r["split"] == "unseen"}
    assert held == {f"pica/{n}.png" for n in range(4)}  # every image of the species, whatever its hash
    assert all(r["genus"] != "Pica" for r in catalog if r["split"] != "unseen")
    keys = {rec["__key__"] for shard in out.glob("unseen/shard-*.tar") for rec in iter_records(str(shard))}
    assert keys == {r["key"] for r in catalog if r["split"] == "unseen"}
    assert stats["shard_sets"]["unseen"] == 4 and check(out) == []


def test_held_out_species_errors_name_the_problem(sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"holdout_species: no kept image of pica picaa"):
        build(_config(sources, tmp_path / "a", holdout_species=["Pica picaa"]))
    with pytest.raises(BuildError, match=r"holdout_split 'val' must differ"):
        build(_config(sources, tmp_path / "b", holdout_species=["Pica pica"], holdout_split="val"))


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present (only in the dev/CI checkout)")
def test_real_photo_ablation_data_and_experiment(tmp_path: Path) -> None:
    """build/shared_holdout holds every listed species out (each genus keeps a trained species), and
    experiment=text_type_real trains on it and evaluates seen and unseen species at every rank."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tolclip.training.run import train

    built = tmp_path / "built"
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(
            "build/shared_holdout",
            overrides=[f"paths.root_dir={ROOT}", f"build.out_dir={built}", "build.progress=false"],
        )
    build(OmegaConf.to_container(cfg.build, resolve=True))
    catalog = pq.read_table(built / "catalog.parquet").to_pandas()
    unseen, train_rows = catalog[catalog.split == "unseen"], catalog[catalog.split == "train"]
    held = {f"{g} {s}" for g, s in zip(unseen.genus, unseen.species, strict=True)}
    assert held == set(cfg.build.holdout_species)
    assert not held & {f"{g} {s}" for g, s in zip(train_rows.genus, train_rows.species, strict=True)}
    assert set(unseen.genus) <= set(train_rows.genus)  # unseen species of seen genera
    shards = {"train": f"{built}/train/shard-*.tar", "seen": f"{built}/val/shard-*.tar"}
    run = make_cfg(
        tmp_path,
        [
            "experiment=text_type_real",
            "data.text_type=taxon",
            f"data.train_shards={shards['train']}",
            f"data.eval_sets.seen={shards['seen']}",
            f"data.eval_sets.unseen={built}/unseen/shard-*.tar",
            *SMALL_RUN,
            "callbacks.zero_shot.text_types=[taxon,com]",
            "trainer.max_epochs=1",
            *MICRO,
        ],
    )
    out = train(run)
    species = {r.eval_set: r for r in out["zero_shot"] if r.rank == "species" and r.text_type == "com"}
    assert species["unseen"].images == len(unseen) and species["seen"].images > 0


def test_report_rows_match_csv_dictwriter(monkeypatch: pytest.MonkeyPatch) -> None:
    # The catalog's fast path must write what csv would, byte for byte, whatever the values.
    values = [
        "",
        "plain",
        "a,b",
        'say "hi"',
        "two\nlines",
        "cr\r",
        " padded ",
        "Bombus ß",
        None,
        True,
        2,
        0.1,
    ]
    for columns in (["only"], ["a", "b", "c"]):
        for combo in itertools.product(values, repeat=len(columns)):
            row = dict(zip(columns, combo, strict=True)) | {"unlisted": "x,y"}
            want, got = io.StringIO(newline=""), io.StringIO(newline="")
            csv.DictWriter(want, columns, extrasaction="ignore").writerow(row)
            CsvRows(got, columns).writerow(row)
            assert got.getvalue() == want.getvalue(), row
    plain = CsvRows(io.StringIO(newline=""), ["a", "b"])
    with monkeypatch.context() as m:
        m.setattr(stats.csv, "writer", None)  # a row that needs no quoting is written without csv
        plain.writerow({"a": "Bombus", "b": True})
    assert plain.fh.getvalue() == "Bombus,True\r\n"
    short = io.StringIO(newline="")
    CsvRows(short, ["a", "b"]).writerow({"a": "1"})  # a missing column is empty, as DictWriter's restval
    assert short.getvalue() == "1,\r\n"


def test_a_catalog_row_made_in_two_halves_matches_csv_dictwriter(tmp_path: Path) -> None:
    """The scan stage writes a row's tail (`catalog_tail`), the driver its head (key, shard, split,
    flag): joined, they must be what csv writes for the whole row, whatever the values."""
    awkward = ["plain", "a,b", 'say "hi"', "two\nlines", ""]
    rows = []
    for i, (source_id, common, shard_set) in enumerate(
        itertools.product(awkward, awkward, ["train", "tr,ain"])
    ):
        taxon = Taxon(kingdom="Animalia", genus="Bombus", species="terrestris", common=common)
        record = SourceRecord(
            path=tmp_path / "x.jpg", source="bees", source_id=source_id, label="", split="test"
        )
        entry = Entry(f"bees_{i:016x}", "bees", source_id, record, taxon, "resolved")
        row = {
            "key": entry.key,
            "shard": f"{shard_set}/shard-000000.tar",
            "split": shard_set,
            "train_small": i % 2 == 0,
            "source": "bees",
            "source_id": source_id,
            "source_split": "test",
            **dict(zip(RANKS, taxon.ranks, strict=True)),
            "common_name": common,
            "resolution_status": "resolved",
        }
        rows.append((entry, row))
    reports = Reports(tmp_path, tmp_path, ["train"])
    want: dict[str, io.StringIO] = {}
    for entry, row in rows:
        head = (entry.key, row["shard"], row["split"], row["train_small"])
        reports.sample(*head, catalog_tail(entry), entry.taxon.ranks, "bees")
        csv.DictWriter(want.setdefault(row["split"], io.StringIO(newline="")), CATALOG_COLUMNS).writerow(row)
    reports.close()
    for split, expected in want.items():  # one part file per split, rows in the order written
        with (tmp_path / f"catalog-{split}.csv").open(encoding="utf-8", newline="") as fh:
            assert fh.read() == expected.getvalue(), split
