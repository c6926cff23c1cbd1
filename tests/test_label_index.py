"""Label indexes: `tolclip index build` writes a complete, self-describing folder; `predict --index` uses it
and refuses another model's; the cache builds an index once per model, taxa, text type and templates, and
rebuilds a damaged entry instead of trusting it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tolclip.models.loading import LoadedModel, load_path
from tolclip.prediction import CustomLabelsClassifier, TreeOfLifeClassifier, build_index, load_index
from tolclip.prediction import index as index_module
from tolclip.prediction.index import (
    CLASSES_FILE,
    EMBEDDINGS_FILE,
    INDEX_FILE,
    IndexError_,
    model_fingerprint,
    save_index,
)
from tolclip.prediction.taxa import read_taxa

from helpers import prediction_files, run_cli, small_release

QUIET = ["--templates", "single", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("index")
    return {**prediction_files(root), "other": small_release(root / "other", seed=1)}


@pytest.fixture(scope="module")
def loaded(models: dict[str, Path]) -> LoadedModel:
    return load_path(models["model"])


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the indexes the cache builds (each a pass of the text tower over every class)."""
    calls: list[int] = []
    real = index_module.build_index

    def counting(model, classes, **kw):
        calls.append(len(classes))
        return real(model, classes, **kw)

    monkeypatch.setattr(index_module, "build_index", counting)
    return calls


cli = run_cli


def build_cli(capsys: pytest.CaptureFixture, models: dict[str, Path], out_dir: Path) -> tuple[int, str, str]:
    """`tolclip index build` of the module's model and taxa into out_dir."""
    return cli(
        capsys,
        "index",
        "build",
        "--model",
        models["model"],
        "--taxa",
        models["taxa"],
        "--out",
        out_dir,
        *QUIET,
    )


def test_index_build_writes_a_complete_index(models, loaded, tmp_path, capsys) -> None:
    out_dir = tmp_path / "idx"
    code, out, err = cli(
        capsys, "index", "build", "--model", models["model"], "--taxa", models["taxa"], "--out", out_dir,
        "--text-type", "sci", *QUIET,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["count"] == 6 and summary["out"] == str(out_dir) and summary["unresolved_names"] == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([INDEX_FILE, EMBEDDINGS_FILE, CLASSES_FILE])
    meta = json.loads((out_dir / INDEX_FILE).read_text())
    assert meta["kind"] == "taxa" and meta["text_type"] == "sci" and meta["templates"] == "single"
    assert meta["template_list"] == ["a photo of {}."]
    assert meta["model"]["fingerprint"] == model_fingerprint(loaded)
    assert meta["count"] == 6 and meta["dim"] == 64 and meta["source"] == str(models["taxa"])
    emb = np.load(out_dir / EMBEDDINGS_FILE)
    assert emb.shape == (6, 64) and emb.dtype == np.float32
    assert np.linalg.norm(emb, axis=1) == pytest.approx(np.ones(6), abs=1e-5)
    classes = pq.read_table(out_dir / CLASSES_FILE).to_pydict()
    assert classes["name"][:2] == ["Corvus corax", "Pica pica"]
    assert classes["family"][2:4] == ["Sulidae", "Moraceae"] and classes["common_name"][0] == "common raven"
    # The same embeddings as the API gives.
    direct = build_index(loaded, read_taxa(models["taxa"]).taxa, text_type="sci", templates="single")
    assert torch.allclose(direct.embeddings, torch.from_numpy(emb), atol=1e-5)
    index = load_index(out_dir, model_fingerprint(loaded))
    assert [t.genus for t in index.taxa] == ["Corvus", "Pica", "Morus", "Morus", "Rosa", "Amanita"]


def test_index_build_refuses_to_overwrite(models, tmp_path, capsys) -> None:
    out_dir = tmp_path / "idx"
    build = ["index", "build", "--model", models["model"], "--taxa", models["taxa"], *QUIET]
    args = [*build, "--out", out_dir]
    assert cli(capsys, *args)[0] == 0
    before = (out_dir / INDEX_FILE).read_text()
    code, _, err = cli(capsys, *args)
    assert code == 2 and "exists; pass --force" in err and len(err.strip().splitlines()) == 1
    assert (out_dir / INDEX_FILE).read_text() == before
    assert cli(capsys, *args, "--force")[0] == 0
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    code, _, err = cli(capsys, *build, "--out", user, "--force")
    assert code == 2 and "is not an index folder; not replacing it" in err
    assert (user / "notes.txt").read_text() == "keep me"


def test_index_build_usage_errors(models, tmp_path, capsys) -> None:
    code, _, err = cli(capsys, "index", "build", "--model", models["model"], "--out", tmp_path / "x", *QUIET)
    assert code == 2 and "names no taxa of its own: pass --taxa" in err
    code, _, err = cli(capsys, "index", "build", "--model", models["model"], "--index", tmp_path, *QUIET)
    assert code == 2 and "`index build` writes one (use --out)" in err
    code, _, err = cli(capsys, "index", "build", "--model", models["model"], "--taxa", tmp_path / "no.csv")
    assert code == 2 and "does not exist" in err


def predict_json(capsys, *args: object) -> list[dict]:
    code, out, err = cli(capsys, "predict", *args, "--format", "json", "--rank", "genus,species", *QUIET)
    assert code == 0, err
    return json.loads(out)


def test_predict_with_an_index_equals_with_taxa(models, tmp_path, capsys) -> None:
    out_dir = tmp_path / "idx"
    build_cli(capsys, models, out_dir)
    common = [models["photos"], "--model", models["model"], "--cache-dir", tmp_path / "cache"]
    by_index = predict_json(capsys, *common, "--index", out_dir)
    by_taxa = predict_json(capsys, *common, "--taxa", models["taxa"])
    assert len(by_index) == 3 * (5 + 5)  # 3 photos, the top 5 of 6 genera and of 6 species each
    assert [{**r, "score": None} for r in by_index] == [{**r, "score": None} for r in by_taxa]
    assert [r["score"] for r in by_index] == pytest.approx([r["score"] for r in by_taxa], abs=1e-6)


def test_an_index_of_another_model_is_refused(models, loaded, tmp_path, capsys) -> None:
    out_dir = tmp_path / "idx"
    build_cli(capsys, models, out_dir)
    code, out, err = cli(
        capsys, "predict", models["photos"], "--model", models["other"], "--index", out_dir, *QUIET
    )
    assert code == 2 and out == ""
    assert f"{out_dir}: built for another model ({models['model']})" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(IndexError_, match="built for another model"):
        load_index(out_dir, model_fingerprint(load_path(models["other"])))
    code, _, err = cli(capsys, "predict", models["photos"], "--model", models["model"], "--index", tmp_path)
    assert code == 2 and "not a label index (missing index.json, embeddings.npy, classes.parquet)" in err


def test_index_build_into_the_cache_is_what_predict_finds(models, tmp_path, capsys, builds) -> None:
    cache = tmp_path / "cache"
    code, out, _ = cli(
        capsys, "index", "build", "--model", models["model"], "--taxa", models["taxa"], "--cache-dir", cache, *QUIET
    )  # fmt: skip
    assert code == 0 and Path(json.loads(out)["out"]).is_relative_to(cache)
    clf = TreeOfLifeClassifier(models["model"], taxa=models["taxa"], templates="single", cache_dir=cache)
    assert builds == [] and clf.index.path == Path(json.loads(out)["out"])


def test_cache_builds_once_per_model_taxa_text_type_templates(models, loaded, tmp_path, builds) -> None:
    cache = tmp_path / "cache"
    taxa = read_taxa(models["taxa"])

    def clf(**kw) -> TreeOfLifeClassifier:
        args = {"taxa": taxa, "templates": "single", "cache_dir": cache, "device": "cpu", **kw}
        return TreeOfLifeClassifier(loaded, **args)

    first = clf()
    assert builds == [6] and first.index.path is not None and first.index.path.is_relative_to(cache)
    again = clf()
    assert builds == [6] and again.index.path == first.index.path
    assert torch.equal(again.index.embeddings, first.index.embeddings)
    # A copy of the release elsewhere is the same model (hashed by content, not by path).
    moved = shutil.copytree(models["model"], tmp_path / "moved")
    assert (
        TreeOfLifeClassifier(moved, taxa=taxa, templates="single", cache_dir=cache).index.path
        == first.index.path
    )
    assert builds == [6]
    assert clf(taxa=taxa.taxa[:5]).index.path != first.index.path and builds == [6, 5]
    assert clf(text_type="sci").index.meta["text_type"] == "sci" and builds == [6, 5, 6]
    assert clf(templates="openai").index.meta["templates"] == "openai" and builds == [6, 5, 6, 6]
    other = TreeOfLifeClassifier(models["other"], taxa=taxa, templates="single", cache_dir=cache)
    assert other.index.path != first.index.path and builds == [6, 5, 6, 6, 6]


@pytest.mark.parametrize("damage", ["delete embeddings", "garbage embeddings", "wrong shape", "old format"])
def test_a_damaged_cache_entry_is_rebuilt(models, loaded, tmp_path, builds, damage: str) -> None:
    args = {"taxa": models["taxa"], "templates": "single", "cache_dir": tmp_path, "device": "cpu"}
    good = TreeOfLifeClassifier(loaded, **args).index
    folder = good.path
    if damage == "delete embeddings":
        (folder / EMBEDDINGS_FILE).unlink()
    elif damage == "garbage embeddings":
        (folder / EMBEDDINGS_FILE).write_bytes(b"\x93NUMPY not really")
    elif damage == "wrong shape":
        np.save(folder / EMBEDDINGS_FILE, np.zeros((2, 64), np.float32))
    else:
        meta = json.loads((folder / INDEX_FILE).read_text())
        (folder / INDEX_FILE).write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(IndexError_):
        load_index(folder)
    rebuilt = TreeOfLifeClassifier(loaded, **args).index
    assert builds == [6, 6] and rebuilt.path == folder
    assert torch.allclose(load_index(folder).embeddings, good.embeddings, atol=1e-6)


def test_custom_labels_are_cached_too(loaded, tmp_path, builds) -> None:
    labels = ["Corvus corax", "Pica pica", "a rock"]
    first = CustomLabelsClassifier(loaded, labels, templates="single", cache_dir=tmp_path).index
    second = CustomLabelsClassifier(loaded, labels, templates="single", cache_dir=tmp_path).index
    assert builds == [3] and first.kind == "labels" and second.path == first.path
    CustomLabelsClassifier(loaded, labels[:2], templates="single", cache_dir=tmp_path)
    assert builds == [3, 2]
    CustomLabelsClassifier(loaded, labels, templates="single", cache_dir=None)
    assert builds == [3, 2, 3] and len(list((tmp_path / "index").rglob(INDEX_FILE))) == 2


def test_select_keeps_rows(loaded, models) -> None:
    index = build_index(loaded, read_taxa(models["taxa"]).taxa, templates="single")
    keep = [True, False, True, False, False, True]
    sub = index.select(keep)
    assert sub.names == [index.names[0], index.names[2], index.names[5]]
    assert torch.equal(sub.embeddings, index.embeddings[[0, 2, 5]])
    assert sub.meta["count"] == 3 and sub.meta["subset_of"] == 6
    with pytest.raises(ValueError, match="subset mask has 2 entries for 6 classes"):
        index.select([True, False])


def test_save_index_replaces_atomically(loaded, models, tmp_path) -> None:
    index = build_index(loaded, read_taxa(models["taxa"]).taxa, templates="single")
    out = save_index(index, tmp_path / "i")
    with pytest.raises(FileExistsError, match="exists; pass --force"):
        save_index(index, out)
    save_index(index.select([True] * 3 + [False] * 3), out, force=True)
    assert len(load_index(out)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i"]  # no temporary folder left beside it
