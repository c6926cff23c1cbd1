"""tolclip's predictions agree with pybioclip's on the same weights, photos and labels.

The weights are a small random CLIP exported by tolclip as an open_clip release folder, which pybioclip
loads offline with ``--model local-dir:DIR``. Custom-label and binned predictions are compared with
pybioclip itself (Python API and CLI); pybioclip's Tree-of-Life mode needs its embeddings from the
Hugging Face hub, so that mode is compared with a reference computed directly with open_clip, following
pybioclip's algorithm (80 OpenAI templates, per-image rank sums in Python above ``min_prob``).
"""

from __future__ import annotations

import collections
import csv
import heapq
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tolclip.core.captions import name
from tolclip.core.taxonomy import RANKS, Taxon
from tolclip.prediction import (
    CustomLabelsBinningClassifier,
    CustomLabelsClassifier,
    TreeOfLifeClassifier,
)

from helpers import SHARED_DATA, small_release

bioclip_predict = pytest.importorskip("bioclip.predict", reason="pybioclip is not installed (test extra)")
open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed (test extra)")

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

TOL = 1e-4
SOURCES = SHARED_DATA / "sources"
LABELS = [
    "Amanita muscaria",
    "Amanita vaginata",
    "Boletus edulis",
    "Boletus erythropus",
    "Danaus plexippus",
    "Papilio machaon",
]
BINS = {
    "Amanita muscaria": "Amanita",
    "Amanita vaginata": "Amanita",
    "Boletus edulis": "Boletus",
    "Boletus erythropus": "Boletus",
    "Danaus plexippus": "butterflies",
    "Papilio machaon": "butterflies",
}
FUNGI = ("Fungi", "Basidiomycota", "Agaricomycetes")
INSECTS = ("Animalia", "Arthropoda", "Insecta", "Lepidoptera")
TAXA = [
    Taxon(*FUNGI, "Agaricales", "Amanitaceae", "Amanita", "muscaria", common="fly agaric"),
    Taxon(*FUNGI, "Agaricales", "Amanitaceae", "Amanita", "vaginata", common="grisette"),
    Taxon(*FUNGI, "Boletales", "Boletaceae", "Boletus", "edulis", common="penny bun"),
    Taxon(*FUNGI, "Boletales", "Boletaceae", "Boletus", "erythropus"),
    Taxon(*INSECTS, "Nymphalidae", "Danaus", "plexippus", common="monarch"),
    Taxon(*INSECTS, "Nymphalidae", "Vanessa", "atalanta", common="red admiral"),
    Taxon(*INSECTS, "Papilionidae", "Papilio", "machaon", common="Old World swallowtail"),
    Taxon(*INSECTS, "Lycaenidae", "Lysandra", "bellargus", common="Adonis blue"),
    Taxon("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina"),
    Taxon("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax"),
]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Seed 1 spreads the probabilities (top-1 between about 0.5 and 0.97 on these photos): a resize that
    # differs (bilinear for bicubic) moves them by 1e-3 or more, ten times the tolerance.
    return small_release(tmp_path_factory.mktemp("release") / "model", seed=1)


@pytest.fixture(scope="module")
def images() -> list[str]:
    """Real photos: square butterflies (224 px), non-square mushrooms, large camera-trap photos in RGB,
    greyscale (L) and CMYK, so that resizing, cropping and colour conversion are all exercised."""
    if not SOURCES.is_dir():
        pytest.skip(f"shared data not found at {SOURCES}")
    mushrooms = sorted((SOURCES / "mushrooms" / "images" / "test").glob("*/*.jpg"))[::35]
    butterflies = sorted((SOURCES / "butterflies-100" / "test").glob("*/*.jpg"))[::125]
    # Not the EXIF-rotated photo: tolclip turns it upright (ImageOps.exif_transpose), pybioclip does not.
    traps = [SOURCES / "camera-trap-edge" / f for f in ("ocelot.jpg", "african_elephants_bw.jpg")]
    traps += [SOURCES / "camera-trap-edge" / "african_elephants_cmyk.jpg"]
    found = [str(p) for p in [*mushrooms, *butterflies, *traps] if p.is_file()]
    if len(found) < 8:
        pytest.skip(f"too few test photos under {SOURCES} ({len(found)})")
    sizes = {Image.open(p).size for p in found}
    assert any(w != h for w, h in sizes), "the photos should include non-square ones"
    return found


def by_image(rows: list[dict]) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    for r in rows:
        out[str(r["file_name"])].append((str(r["classification"]), float(r["score"])))
    return dict(out)


def assert_same_predictions(ours: dict[str, list], theirs: dict[str, list]) -> None:
    """Same images, same labels in the same order (up to exact ties), probabilities within TOL."""
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert len(ours[key]) == len(theirs[key]), key
        for (label, p), (their_label, q) in zip(ours[key], theirs[key], strict=True):
            assert abs(p - q) <= TOL, f"{key}: {label} {p} vs {their_label} {q}"
            # A swapped pair is only acceptable between labels pybioclip scores (almost) equally.
            if label != their_label:
                assert abs(dict(theirs[key])[label] - q) <= 1e-6, f"{key}: {label} ranked for {their_label}"


def spread(rows: dict[str, list[tuple[str, float]]]) -> bool:
    """Whether some image's runner-up has a probability that 1e-4 can tell apart (not all 1.0 and 0.0)."""
    return any(len(r) > 1 and r[1][1] > 1e-2 for r in rows.values())


def test_custom_labels_agree_with_pybioclip(release: Path, images: list[str], tmp_path: Path) -> None:
    theirs = bioclip_predict.CustomLabelsClassifier(
        cls_ary=LABELS, model_str=f"local-dir:{release}", device="cpu"
    ).predict(images, k=None)
    ours = CustomLabelsClassifier(release, LABELS, device="cpu", cache_dir=tmp_path).predict(images)
    assert not any(r["error"] for r in ours)
    assert spread(by_image(theirs)), "probabilities too peaked to compare"
    assert_same_predictions(by_image(ours), by_image(theirs))
    # Top 3 only: the same prefix.
    top3 = CustomLabelsClassifier(release, LABELS, device="cpu", cache_dir=tmp_path).predict(images, k=3)
    assert_same_predictions(by_image(top3), {k: v[:3] for k, v in by_image(theirs).items()})


def test_binned_labels_agree_with_pybioclip(release: Path, images: list[str], tmp_path: Path) -> None:
    theirs = bioclip_predict.CustomLabelsBinningClassifier(
        cls_to_bin=BINS, model_str=f"local-dir:{release}", device="cpu"
    ).predict(images, k=2)
    ours = CustomLabelsBinningClassifier(release, BINS, device="cpu", cache_dir=tmp_path).predict(images, k=2)
    assert {label for label, _ in sum(by_image(ours).values(), [])} <= set(BINS.values())
    assert_same_predictions(by_image(ours), by_image(theirs))


def run_cli(cmd: list[str], what: str, timeout: int = 180) -> list[dict[str, str]]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish within {timeout} s")
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stderr[-2000:]}"
    return list(csv.DictReader(io.StringIO(done.stdout)))


def test_cli_csv_agrees_with_bioclip_predict(release: Path, images: list[str], tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "bioclip").is_file():
        pytest.skip(f"no bioclip command beside {sys.executable}")
    labels = ",".join(LABELS)
    theirs = run_cli(
        [str(bindir / "bioclip"), "predict", "--format", "csv", "--model", f"local-dir:{release}"]
        + ["--cls", labels, "--k", "4", *images],
        "bioclip predict",
    )
    ours = run_cli(
        [str(bindir / "tolclip"), "predict", "--format", "csv", "--model", str(release), "--cls", labels]
        + ["--k", "4", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), *images],
        "tolclip predict",
    )
    assert list(theirs[0]) == ["file_name", "classification", "score"]
    assert {"file_name", "classification", "score"} <= set(ours[0])
    assert len(theirs) == 4 * len(images)
    assert_same_predictions(by_image(ours), by_image(theirs))


# ------------------------------------------------------------------------------ Tree-of-Life mode


@torch.no_grad()
def open_clip_reference(release: Path, images: list[str], taxa: list[Taxon]) -> torch.Tensor:
    """[images, species] probabilities computed with open_clip alone, as pybioclip computes them."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{release}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{release}")
    model.eval()
    classes = []
    for taxon in taxa:
        prompts = [
            template(name(taxon, "taxon_com")) for template in bioclip_predict.OPENA_AI_IMAGENET_TEMPLATE
        ]
        feats = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1).mean(dim=0)
        classes.append(feats / feats.norm())
    pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images])
    feats = F.normalize(model.encode_image(pixels), dim=-1)
    return F.softmax(model.logit_scale.exp() * feats @ torch.stack(classes).T, dim=1)


def reference_top(probs: torch.Tensor, taxa: list[Taxon], rank: str, k: int, min_prob: float) -> list:
    """One image's top-k (lineage, probability) at `rank`: species above `min_prob` summed one by one."""
    depth = RANKS.index(rank) + 1
    sums: dict[tuple[str, ...], float] = collections.defaultdict(float)
    for i, taxon in enumerate(taxa):
        if rank == "species" or probs[i] > min_prob:
            sums[taxon.ranks[:depth]] += float(probs[i])
    return [(key, sums[key]) for key in heapq.nlargest(k, sums, key=sums.get)]


def row_lineage(row: dict, rank: str) -> tuple[str, ...]:
    depth = RANKS.index(rank) + 1
    return tuple(row["species_epithet"] if r == "species" else row[r] for r in RANKS[:depth])


def test_tree_of_life_agrees_with_open_clip_reference(
    release: Path, images: list[str], tmp_path: Path
) -> None:
    k, min_prob = 3, 1e-9
    probs = open_clip_reference(release, images, TAXA)
    clf = TreeOfLifeClassifier(release, taxa=TAXA, device="cpu", cache_dir=tmp_path)
    rows = clf.predict(images, rank="all", k=k, min_prob=min_prob)
    assert not any(r["error"] for r in rows)
    for i, image in enumerate(images):
        for rank in RANKS:
            ours = [
                (row_lineage(r, rank), r["score"])
                for r in rows
                if r["file_name"] == image and r["rank"] == rank
            ]
            want = reference_top(probs[i], TAXA, rank, k, min_prob)
            assert len(ours) == len(want), (image, rank)
            for (lineage, p), (want_lineage, q) in zip(ours, want, strict=True):
                assert abs(p - q) <= TOL, f"{image} {rank}: {lineage} {p} vs {want_lineage} {q}"
                assert lineage == want_lineage or abs(dict(want).get(lineage, -1) - q) <= 1e-6, (image, rank)
    species = [r for r in rows if r["rank"] == "species"]
    assert {r["species"] for r in species} <= {f"{t.genus} {t.species}" for t in TAXA}
    assert any(r["common_name"] for r in species)
