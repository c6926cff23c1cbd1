"""`tolclip predict` and `tolclip embed` in-process (exit status, stdout, stderr), once through the installed
entry point: bad inputs reported per file in every format, custom labels and bins, output rules, embeddings
keyed by path with the model's fingerprint, the default taxa of a training run, model argument errors."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tolclip.models.loading import load_path
from tolclip.prediction import build_index, embed_images
from tolclip.prediction.classify import LABEL_COLUMNS, TOL_COLUMNS
from tolclip.prediction.index import model_fingerprint

from helpers import (
    SHARED_DATA,
    SMALL_NET,
    colour_image,
    prediction_files,
    run_cli,
    write_catalog,
)

TOLCLIP = Path(sys.executable).with_name("tolclip")
EDGE = SHARED_DATA / "sources" / "camera-trap-edge"
QUIET = ["--templates", "single", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return prediction_files(tmp_path_factory.mktemp("cli"))


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is written to ~/.cache; no TOLCLIP_ROOT of the caller's leaks into a run's paths."""
    monkeypatch.setenv("TOLCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TOLCLIP_ROOT", raising=False)


cli = run_cli


def read_csv(path: str | Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    return lines[0]


# ----------------------------------------------------------------------------------------- bad inputs


@pytest.fixture
def bad_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A folder of good and bad images, an empty folder and a missing file; paths relative to the cwd."""
    if not EDGE.is_dir():
        pytest.skip(f"{EDGE} absent (../shared/data)")
    monkeypatch.chdir(tmp_path)
    shots = Path("shots")
    shots.mkdir()
    shutil.copy(EDGE / "african_elephants_truncated_file.jpg", shots / "truncated.jpg")
    shutil.copy(EDGE / "african_elephants_cmyk.jpg", shots / "cmyk.jpg")
    (shots / "notes.jpg").write_text("a text file named like a photo\n")
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 1], rgba[10:30, 10:30, 3] = 160, 255  # a green square on a transparent background
    Image.fromarray(rgba, "RGBA").save(shots / "alpha.png")
    colour_image(5).save(shots / "good.png")
    Path("empty").mkdir()
    return {
        "shots/truncated.jpg": "truncated",
        "shots/notes.jpg": "not an image",
        "missing.jpg": "file not found",
        "empty": "folder holds no image files",
    }


GOOD = {"shots/alpha.png", "shots/cmyk.jpg", "shots/good.png"}


def read_rows(fmt: str, out: str, path: Path | None) -> list[dict]:
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(out)))
    if fmt == "json":
        return json.loads(out)
    return pq.read_table(path).to_pylist()


@pytest.mark.shared_data
@pytest.mark.parametrize("fmt", ["csv", "json", "parquet", "table"])
def test_bad_inputs_are_rows_in_every_format(env, bad_folder, capsys, fmt: str) -> None:
    output = ["--output", "rows.parquet"] if fmt == "parquet" else ["--format", fmt]
    code, out, err = cli(
        capsys, "predict", "shots", "missing.jpg", "empty", "--model", env["model"], "--taxa", env["taxa"],
        "--k", "2", *output, *QUIET,
    )  # fmt: skip
    assert code == 1, err
    assert "5 images" in err and "4 unreadable" in err
    if fmt == "table":
        # A narrow column folds a long reason over lines: its first word is on the file's line.
        for name, reason in bad_folder.items():
            assert any(name in line and reason.split()[0] in line for line in out.splitlines()), (name, out)
            assert all(word in out for word in reason.split())
        assert all(sum(name in line for line in out.splitlines()) == 2 for name in GOOD), out
        return
    rows = read_rows(fmt, out, Path("rows.parquet") if fmt == "parquet" else None)
    errors = {r["file_name"]: r["error"] for r in rows if r["error"]}
    assert errors == bad_folder
    predicted = [r["file_name"] for r in rows if not r["error"]]
    assert sorted(predicted) == sorted([*GOOD, *GOOD])  # k=2 rows for each good image
    assert all(r["species"] and float(r["score"]) > 0 for r in rows if not r["error"])
    assert all(r["score"] in (None, "") for r in rows if r["error"])
    assert list(rows[0]) == list(TOL_COLUMNS)


@pytest.mark.shared_data
@pytest.mark.parametrize("fmt", ["parquet", "npy", "csv"])
def test_embed_bad_inputs_keep_a_row(env, bad_folder, capsys, fmt: str) -> None:
    code, _, err = cli(
        capsys, "embed", "shots", "missing.jpg", "empty", "--model", env["model"], "--output", f"e.{fmt}", *QUIET
    )  # fmt: skip
    assert code == 1 and "4 unreadable" in err
    if fmt == "parquet":
        table = pq.read_table("e.parquet")
        rows = {r["key"]: r for r in table.to_pylist()}
        meta = json.loads(table.schema.metadata[b"tolclip"])
        vectors = {k: r["embedding"] for k, r in rows.items()}
    elif fmt == "npy":
        array = np.load("e.npy")
        index = read_csv("e.index.csv")
        assert [int(r["row"]) for r in index] == list(range(len(array)))
        rows = {r["key"]: r for r in index}
        vectors = {r["key"]: array[int(r["row"])] for r in index}
        meta = json.loads(Path("e.json").read_text())
    else:
        table = read_csv("e.csv")
        rows = {r["key"]: r for r in table}
        vectors = {r["key"]: np.array([float(r[f"e{i}"]) for i in range(64)]) for r in table}
        meta = json.loads(Path("e.json").read_text())
    assert {k: r["error"] for k, r in rows.items() if r["error"]} == bad_folder
    assert set(rows) == set(bad_folder) | GOOD
    for key in bad_folder:
        assert vectors[key] is None if fmt == "parquet" else np.isnan(vectors[key]).all()
    for key in GOOD:
        assert np.linalg.norm(vectors[key]) == pytest.approx(1.0, abs=1e-5)
    assert meta["failed"] == 4 and meta["count"] == 7 and meta["kind"] == "image"
    assert meta["model"]["fingerprint"] == model_fingerprint(load_path(env["model"]))


def test_arguments_that_name_no_image_are_still_rows(env, tmp_path, capsys) -> None:
    # Before: with no readable argument at all, "none of the 0 images could be read" and exit 2.
    (tmp_path / "empty").mkdir()
    args = [tmp_path / "missing.jpg", tmp_path / "empty", "--model", env["model"], *QUIET]
    code, out, err = cli(capsys, "predict", *args, "--taxa", env["taxa"], "--format", "json")
    assert code == 1, err
    assert [(r["file_name"], r["error"]) for r in json.loads(out)] == [
        (str(tmp_path / "missing.jpg"), "file not found"),
        (str(tmp_path / "empty"), "folder holds no image files"),
    ]
    code, _, err = cli(capsys, "embed", *args, "--output", tmp_path / "e.parquet")
    table = pq.read_table(tmp_path / "e.parquet")
    assert code == 1 and table.column("error").to_pylist() == [
        "file not found",
        "folder holds no image files",
    ]
    assert table.column("embedding").to_pylist() == [None, None]


# ------------------------------------------------------------------------------------ embeddings


def test_embed_equals_the_api_and_records_the_model(env, tmp_path, capsys) -> None:
    model = load_path(env["model"])
    paths = sorted(str(p) for p in env["photos"].iterdir())
    api = embed_images(model, paths).features.numpy()
    out = tmp_path / "e.parquet"
    code, _, err = cli(capsys, "embed", env["photos"], "--model", env["model"], "--output", out, *QUIET)
    assert code == 0, err
    table = pq.read_table(out)
    assert table.column("key").to_pylist() == paths
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.allclose(got, api, atol=1e-5)
    assert np.linalg.norm(got, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    meta = json.loads(table.schema.metadata[b"tolclip"])
    assert meta["model"] == {
        "fingerprint": model_fingerprint(model),
        "name": "release",
        "source": str(env["model"]),
    }
    assert meta["normalized"] is True and meta["dim"] == 64 and meta["net_config"] == model.net_config
    raw = tmp_path / "raw.npy"
    code, _, _ = cli(
        capsys, "embed", *paths, "--model", env["model"], "--output", raw, "--no-normalize", *QUIET
    )  # fmt: skip
    unnormed = np.load(raw)
    assert code == 0 and not np.allclose(np.linalg.norm(unnormed, axis=1), 1.0, atol=1e-3)
    assert np.allclose(unnormed / np.linalg.norm(unnormed, axis=1, keepdims=True), api, atol=1e-5)
    assert json.loads(raw.with_suffix(".json").read_text())["normalized"] is False


def test_embed_text_equals_the_index_rows(env, tmp_path, capsys) -> None:
    labels = ["Corvus corax", "Pica pica", "a rock"]
    expected = build_index(load_path(env["model"]), labels, templates="single").embeddings.numpy()
    out = tmp_path / "t.npy"
    code, _, err = cli(
        capsys, "embed", "--text", ",".join(labels), "--model", env["model"], "--output", out, *QUIET
    )
    assert code == 0, err
    assert np.allclose(np.load(out), expected, atol=1e-6)
    assert [r["key"] for r in read_csv(tmp_path / "t.index.csv")] == labels
    meta = json.loads((tmp_path / "t.json").read_text())
    assert meta["kind"] == "text" and meta["templates"] == "single" and meta["count"] == 3
    listed = tmp_path / "labels.txt"
    listed.write_text("\n".join(labels) + "\n\n")
    code, _, _ = cli(
        capsys, "embed", "--text-file", listed, "--model", env["model"], "--output", tmp_path / "t.csv", *QUIET
    )  # fmt: skip
    table = read_csv(tmp_path / "t.csv")
    assert code == 0 and [r["key"] for r in table] == labels
    assert np.allclose([[float(r[f"e{i}"]) for i in range(64)] for r in table], expected, atol=1e-6)


def test_embed_usage_errors(env, tmp_path, capsys) -> None:
    model = ["--model", env["model"], *QUIET]
    code, _, err = cli(
        capsys, "embed", env["photos"], "--text", "a,b", "--output", tmp_path / "x.npy", *model
    )
    assert code == 2 and "not both and not neither" in one_line(err)
    code, _, err = cli(capsys, "embed", env["photos"], "--output", tmp_path / "x.txt", *model)
    assert code == 2 and "cannot tell the format from" in one_line(err)
    (tmp_path / "x.npy").write_text("mine")
    code, _, err = cli(capsys, "embed", env["photos"], "--output", tmp_path / "x.npy", *model)
    assert code == 2 and "exists; pass --force" in one_line(err)
    assert (tmp_path / "x.npy").read_text() == "mine"


# ---------------------------------------------------------------------------------- custom labels


def label_rows(capsys, env, *args: object) -> list[dict]:
    code, out, err = cli(
        capsys, "predict", env["photos"], "--model", env["model"], "--format", "csv", *args, *QUIET
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == list(LABEL_COLUMNS)
    return rows


def test_custom_labels_and_bins(env, tmp_path, capsys) -> None:
    labels = ["Amanita muscaria", "Boletus edulis", "Corvus corax", "Rosa canina"]
    by_cls = label_rows(capsys, env, "--cls", ",".join(labels))
    assert len(by_cls) == 3 * len(labels)  # k defaults to every label
    listed = tmp_path / "labels.txt"
    listed.write_text("\n".join(labels) + "\n")
    by_file = label_rows(capsys, env, "--cls-file", listed)
    assert [(r["file_name"], r["classification"]) for r in by_file] == [
        (r["file_name"], r["classification"]) for r in by_cls
    ]
    assert len(label_rows(capsys, env, "--cls", ",".join(labels), "--k", "1")) == 3
    bins = {
        "Amanita muscaria": "fungus",
        "Boletus edulis": "fungus",
        "Corvus corax": "bird",
        "Rosa canina": "plant",
    }
    bins_csv = tmp_path / "bins.csv"
    bins_csv.write_text("label,bin\n" + "".join(f"{c},{b}\n" for c, b in bins.items()))
    binned = label_rows(capsys, env, "--bins", bins_csv)
    assert len(binned) == 3 * 3
    for name in {r["file_name"] for r in by_cls}:
        by_hand: dict[str, float] = {}
        for r in by_cls:
            if r["file_name"] == name:
                by_hand[bins[r["classification"]]] = by_hand.get(bins[r["classification"]], 0) + float(
                    r["score"]
                )
        got = {r["classification"]: float(r["score"]) for r in binned if r["file_name"] == name}
        assert got == pytest.approx(by_hand, abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cls", "a,b", "--rank", "genus"], "not with --cls/--bins"),
        (["--cls", "only"], "at least two labels"),
        (["--bins", "nope.csv"], "bins file nope.csv does not exist"),
        (["--taxa", "t.csv", "--index", "i"], "give --taxa or --index, not both"),
        (["--cls", "a,b", "--k", "0"], "--k must be at least 1"),
        (["--rank", "tribe"], "unknown rank tribe"),
        (["--format", "parquet"], "parquet is written to a file: pass --output FILE.parquet"),
    ],
)
def test_usage_errors_are_one_line(env, capsys, args: list[str], message: str) -> None:
    taxa = [] if "--taxa" in args or "--cls" in args or "--bins" in args else ["--taxa", env["taxa"]]
    code, out, err = cli(capsys, "predict", env["photos"], "--model", env["model"], *taxa, *args, *QUIET)
    assert code == 2 and out == ""
    assert message in one_line(err)


# --------------------------------------------------------------------------------------- outputs


def test_output_files_format_from_suffix_and_no_overwrite(env, tmp_path, capsys) -> None:
    base = ["predict", env["photos"], "--model", env["model"], "--taxa", env["taxa"], "--k", "2", *QUIET]
    for suffix in ("json", "csv", "parquet", "txt"):
        out = tmp_path / f"rows.{suffix}"
        code, stdout, err = cli(capsys, *base, "--output", out)
        assert code == 0 and stdout == "", err
        if suffix == "json":
            rows = json.loads(out.read_text())
            assert len(rows) == 6 and all(list(r) == list(TOL_COLUMNS) for r in rows)
        elif suffix == "parquet":
            table = pq.read_table(out)
            assert table.column_names == list(TOL_COLUMNS) and table.num_rows == 6
        else:  # csv, and csv for a suffix that names no format
            assert out.read_text().splitlines()[0] == ",".join(TOL_COLUMNS)
    before = (tmp_path / "rows.json").read_text()
    code, _, err = cli(capsys, *base, "--output", tmp_path / "rows.json", "--k", "1")
    assert code == 2 and "rows.json exists; pass --force to replace it" in one_line(err)
    assert (tmp_path / "rows.json").read_text() == before
    assert cli(capsys, *base, "--output", tmp_path / "rows.json", "--k", "1", "--force")[0] == 0
    assert len(json.loads((tmp_path / "rows.json").read_text())) == 3
    # --format wins over the suffix.
    assert cli(capsys, *base, "--output", tmp_path / "rows.out", "--format", "json")[0] == 0
    assert len(json.loads((tmp_path / "rows.out").read_text())) == 6
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_subset_on_the_command_line(env, tmp_path, capsys) -> None:
    base = [
        "predict",
        env["photos"],
        "--model",
        env["model"],
        "--taxa",
        env["taxa"],
        "--format",
        "json",
        *QUIET,
    ]
    code, out, err = cli(capsys, *base, "--subset", "Morus", "--k", "10")
    rows = json.loads(out)
    assert code == 0 and {(r["family"], r["species"]) for r in rows} == {
        ("Sulidae", "Morus bassanus"),
        ("Moraceae", "Morus alba"),
    }
    subset_csv = tmp_path / "subset.csv"
    subset_csv.write_text("family\nCorvidae\nRosaceae\n")
    code, out, _ = cli(capsys, *base, "--subset", subset_csv, "--rank", "genus")
    assert code == 0 and {r["genus"] for r in json.loads(out)} == {"Corvus", "Pica", "Rosa"}
    code, out, err = cli(capsys, *base, "--subset", "Nonexistus")
    assert code == 2 and out == ""
    assert one_line(err) == "tolclip predict: error: subset: not among the index's taxa: Nonexistus"


def test_bf16_precision_on_the_command_line(env, capsys) -> None:
    base = ["predict", env["photos"], "--model", env["model"], "--taxa", env["taxa"], "--format", "json"]
    code, out, _ = cli(capsys, *base, "--k", "6", *QUIET)
    code16, out16, _ = cli(capsys, *base, "--k", "6", "--precision", "bf16", *QUIET)
    fp32 = {(r["file_name"], r["species"]): r["score"] for r in json.loads(out)}
    bf16 = {(r["file_name"], r["species"]): r["score"] for r in json.loads(out16)}
    assert code == code16 == 0 and fp32.keys() == bf16.keys()  # every species of every photo, both ways
    diffs = [abs(fp32[k] - bf16[k]) for k in fp32]
    assert 0 < max(diffs) < 2e-2  # bf16 arithmetic ran, and stayed close
    code, _, err = cli(capsys, *base, "--precision", "fp16", *QUIET)
    assert code == 2 and "--precision" in err


def test_names_the_taxonomy_does_not_know_are_reported(env, tmp_path, capsys) -> None:
    names = tmp_path / "names.csv"
    names.write_text("scientific_name\nAmanita muscaria\nBoletus edulis\nFooxus imaginarius\n")
    code, out, err = cli(
        capsys, "predict", env["photos"], "--model", env["model"], "--taxa", names, "--format", "json",
        "--rank", "kingdom", *QUIET,
    )  # fmt: skip
    assert code == 0
    assert "1 names not in the offline taxonomy, kept as given: Fooxus imaginarius" in err
    # The unresolved name has no kingdom: its probability goes to an unnamed kingdom, reported as such.
    assert {r["kingdom"] for r in json.loads(out)} <= {"Fungi", ""}


# ------------------------------------------------------------------------------- models and runs


def fake_run(project: Path, name: str, data: dict) -> Path:
    """A training run folder as `tolclip train` leaves it: .hydra/{config,hydra}.yaml with the run's own
    interpolations, and checkpoints/last.ckpt a link to the step checkpoint (Lightning's save_last: link)."""
    run = project / "logs" / "train" / "runs" / name
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    cfg = {
        "task_name": "train",
        "seed": 0,
        "data": {
            "_target_": "tolclip.data.datamodule.ShardDataModule",
            **data,
            "image_size": "${model.net.vision.image_size}",
            "seed": "${seed}",
        },
        "model": {
            "_target_": "tolclip.training.clip_module.CLIPLitModule",
            "net": {"_target_": "tolclip.models.towers.CLIP", **SMALL_NET},
        },
        "paths": {
            "root_dir": "${oc.env:TOLCLIP_ROOT,${hydra:runtime.cwd}}",
            "data_dir": "${paths.root_dir}/data",
            "log_dir": "${paths.root_dir}/logs",
            "output_dir": "${hydra:runtime.output_dir}",
        },
    }
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    hydra = {"hydra": {"runtime": {"version": "1.3.2", "cwd": str(project), "output_dir": str(run)}}}
    OmegaConf.save(OmegaConf.create(hydra), run / ".hydra" / "hydra.yaml")
    from tolclip.models.towers import CLIP

    torch.manual_seed(0)
    state = {f"net.{k}": v for k, v in CLIP(**SMALL_NET).state_dict().items()}
    torch.save({"state_dict": state, "global_step": 1}, run / "checkpoints" / "step_000001.ckpt")
    (run / "checkpoints" / "last.ckpt").symlink_to("step_000001.ckpt")
    return run


SYNTHETIC_DATA = {
    "generate": {"out_dir": "${paths.data_dir}/synthetic", "seed": 0},
    "train_shards": "${data.generate.out_dir}/train/shard-*.tar",
    "eval_sets": {"seen": "${data.generate.out_dir}/val/shard-*.tar"},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with a synthetic tree of life in data/synthetic and one training run on it."""
    from tolclip.data.synthetic.dataset import build_synthetic_dataset

    root = tmp_path_factory.mktemp("project")
    sizes = dict(phyla_per_kingdom=1, classes_per_phylum=1, orders_per_class=1, families_per_order=2)
    build_synthetic_dataset(
        root / "data" / "synthetic", kingdoms=2, **sizes, genera_per_family=1, species_per_genus=2,
        image_size=16, train_per_species=1, val_per_species=1, unseen_per_species=1,
    )  # fmt: skip
    fake_run(root, "2026-01-02_00-00-00", SYNTHETIC_DATA)
    return root


def synthetic_species(project: Path) -> set[str]:
    taxa = json.loads((project / "data" / "synthetic" / "taxa.json").read_text())
    return {f"{e['taxon']['genus']} {e['taxon']['species']}" for e in taxa}


def test_a_runs_model_names_its_training_taxa(env, project, capsys) -> None:
    run = project / "logs" / "train" / "runs" / "2026-01-02_00-00-00"
    for model in (run / "checkpoints" / "last.ckpt", run):
        code, out, err = cli(
            capsys, "predict", env["photos"], "--model", model, "--format", "json", "--k", "20", *QUIET
        )  # fmt: skip
        rows = json.loads(out)
        assert code == 0, err
        assert {r["species"] for r in rows} == synthetic_species(project) and len(rows) == 3 * 8


def test_the_default_model_is_the_newest_run(env, project, tmp_path, monkeypatch, capsys) -> None:
    newer = project / "logs" / "train" / "runs" / "2026-01-02_00-00-00" / "checkpoints" / "last.ckpt"
    older = tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00" / "checkpoints"
    shutil.copytree(project / "logs", tmp_path / "logs", symlinks=True)
    shutil.copytree(project / "data", tmp_path / "data")
    older.mkdir(parents=True)
    (older / "last.ckpt").write_text("an older run's broken checkpoint: never picked")
    os.utime(older / "last.ckpt", (time.time() - 3600,) * 2)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "predict", env["photos"], "--format", "json", *QUIET)
    assert code == 0, err
    assert f"using the newest training run's model logs/train/runs/{newer.parent.parent.name}" in err
    assert {r["species"] for r in json.loads(out)} <= synthetic_species(tmp_path)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    code, _, err = cli(capsys, "predict", env["photos"], *QUIET)
    assert code == 2 and "no --model given, and no training run" in one_line(err) and "--model" in err


def test_a_run_on_built_shards_uses_their_catalog(env, tmp_path, capsys) -> None:
    from tolclip.curate.stats import CATALOG_COLUMNS

    shards = tmp_path / "data" / "shards"
    (shards / "train").mkdir(parents=True)
    rows = [
        {**dict.fromkeys(CATALOG_COLUMNS, ""), "key": k, "train_small": False, "genus": g, "species": s}
        for k, g, s in [("a", "Corvus", "corax"), ("b", "Pica", "pica"), ("c", "Corvus", "corax")]
    ]
    write_catalog(shards, rows)
    data = {"train_shards": "${paths.data_dir}/shards/train/shard-{000000..000003}.tar"}
    run = fake_run(tmp_path, "run", data)
    code, out, err = cli(capsys, "predict", env["photos"], "--model", run, "--format", "json", *QUIET)
    assert code == 0, err
    assert {r["species"] for r in json.loads(out)} == {"Corvus corax", "Pica pica"}
    (shards / "catalog.parquet").unlink()
    (shards / "catalog.csv").unlink()
    code, _, err = cli(capsys, "predict", env["photos"], "--model", run, *QUIET)
    assert code == 2 and "(no taxa.json or catalog found)" in err and "pass --taxa" in one_line(err)


def test_model_argument_errors(env, tmp_path, capsys) -> None:
    base = ["predict", env["photos"], "--taxa", env["taxa"], *QUIET]
    code, _, err = cli(capsys, *base, "--model", tmp_path / "nowhere")
    assert code == 2 and "does not exist" in one_line(err)
    code, _, err = cli(capsys, "predict", env["photos"], "--model", env["model"], *QUIET)
    assert code == 2 and "names no taxa of its own: pass --taxa" in one_line(err)
    bare = shutil.copy(env["model"] / "open_clip_model.safetensors", tmp_path / "weights.safetensors")
    code, _, err = cli(capsys, *base, "--model", bare)
    assert code == 2 and "--quick-gelu" in one_line(err) and "--no-quick-gelu" in err
    code, out, err = cli(capsys, *base, "--model", bare, "--no-quick-gelu", "--format", "json")
    assert code == 0, err
    with_release = cli(capsys, *base, "--model", env["model"], "--format", "json")[1]
    assert [r["score"] for r in json.loads(out)] == pytest.approx(
        [r["score"] for r in json.loads(with_release)], abs=1e-6
    )


@pytest.mark.slow
@pytest.mark.shared_data
def test_installed_entry_point(env, bad_folder, tmp_path) -> None:
    if not TOLCLIP.is_file():
        pytest.skip(f"no installed `tolclip` beside {sys.executable}")
    cmd = [
        str(TOLCLIP), "predict", "shots", "missing.jpg", "--model", str(env["model"]), "--taxa", str(env["taxa"]),
        "--templates", "single", "--format", "csv", "--workers", "1",
    ]  # fmt: skip
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ})
    except subprocess.TimeoutExpired:
        pytest.fail("`tolclip predict` did not finish within 120 s")
    assert res.returncode == 1, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    errors = {r["file_name"]: r["error"] for r in rows if r["error"]}
    assert errors == {k: v for k, v in bad_folder.items() if k != "empty"}
    assert {r["file_name"] for r in rows if not r["error"]} == GOOD
    assert "Traceback" not in res.stderr and "5 images" in res.stderr and "3 unreadable" in res.stderr
