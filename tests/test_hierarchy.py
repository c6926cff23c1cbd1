import pytest
import torch

from tolclip.core.taxonomy import RANKS, Taxon, lineage
from tolclip.evaluation.hierarchy import (
    lca_height,
    mistake_severity,
    rank_consistency,
    summed_rank_accuracy,
    summed_rank_predictions,
)


def tx(k="", p="", c="", o="", f="", g="", s="") -> Taxon:
    return Taxon(kingdom=k, phylum=p, class_=c, order=o, family=f, genus=g, species=s)


RAVEN = tx("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax")
CROW = tx("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "cornix")
MAGPIE = tx("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "pica")
TIT = tx("Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Parus", "major")
OWL = tx("Animalia", "Chordata", "Aves", "Strigiformes", "Strigidae", "Strix", "aluco")
FOX = tx("Animalia", "Chordata", "Mammalia", "Carnivora", "Canidae", "Vulpes", "vulpes")
BEE = tx("Animalia", "Arthropoda", "Insecta", "Hymenoptera", "Apidae", "Apis", "mellifera")
ROSE = tx("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina")
# The same genus name under another family (homonym): a different genus by lineage.
CORVUS_HOMONYM = tx("Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Corvus", "corax")
CORVUS_SP = tx("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "")
RAVEN_NO_CLASS = tx("Animalia", "Chordata", "", "Passeriformes", "Corvidae", "Corvus", "corax")
CROW_NO_CLASS = tx("Animalia", "Chordata", "", "Passeriformes", "Corvidae", "Corvus", "cornix")


@pytest.mark.parametrize(
    ("a", "b", "height"),
    [
        (RAVEN, RAVEN, 0),
        (RAVEN, CROW, 1),  # same genus
        (RAVEN, MAGPIE, 2),  # same family
        (RAVEN, TIT, 3),  # same order
        (RAVEN, OWL, 4),  # same class
        (RAVEN, FOX, 5),  # same phylum
        (RAVEN, BEE, 6),  # same kingdom
        (RAVEN, ROSE, 7),  # nothing shared
        (RAVEN, CORVUS_HOMONYM, 3),  # equal genus names, different lineages: LCA is the order
        (CORVUS_SP, CORVUS_SP, 1),  # species unknown in both: not known to be the same species
        (RAVEN, CORVUS_SP, 1),  # species unknown in one
        (RAVEN_NO_CLASS, RAVEN_NO_CLASS, 0),  # a rank missing in both does not break the lineage
        (RAVEN_NO_CLASS, CROW_NO_CLASS, 1),
        (RAVEN, RAVEN_NO_CLASS, 5),  # missing in one only: lineages part at class
        (tx(), tx(), 7),
        (tx(), RAVEN, 7),
    ],
)
def test_lca_height(a, b, height):
    assert lca_height(a, b) == height
    assert lca_height(b, a) == height


CLASSES = [RAVEN, CROW, MAGPIE, TIT, OWL, FOX, BEE, ROSE, CORVUS_HOMONYM]


def random_probs(n: int, s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, s, generator=g).mul(3).softmax(dim=-1)


@pytest.mark.parametrize("rank", RANKS)
def test_summed_predictions_match_manual_sum(rank):
    probs = random_probs(6, len(CLASSES))
    keys, summed = summed_rank_predictions(probs, CLASSES, rank)
    assert len(keys) == len(set(keys)) == summed.shape[1]
    torch.testing.assert_close(summed.sum(dim=1), torch.ones(6))
    for g, key in enumerate(keys):
        manual = sum(probs[:, s] for s, t in enumerate(CLASSES) if lineage(t, rank) == key)
        torch.testing.assert_close(summed[:, g], manual)
    # numpy in, same answer, on the CPU
    np_keys, np_summed = summed_rank_predictions(probs.numpy(), CLASSES, rank)
    assert np_keys == keys and np_summed.device.type == "cpu"
    torch.testing.assert_close(np_summed, summed)


def test_summed_predictions_keep_homonyms_apart():
    keys, _ = summed_rank_predictions(random_probs(2, len(CLASSES)), CLASSES, "genus")
    assert sum(k[-1] == "Corvus" for k in keys) == 2
    assert lineage(RAVEN, "genus") in keys and lineage(CORVUS_HOMONYM, "genus") in keys


def test_summed_predictions_reject_bad_shapes():
    with pytest.raises(ValueError, match="probs must be"):
        summed_rank_predictions(torch.ones(3, 4), CLASSES, "genus")
    with pytest.raises(ValueError, match="unknown rank"):
        summed_rank_predictions(torch.ones(3, len(CLASSES)), CLASSES, "tribe")


def test_summed_accuracy_at_species_is_plain_top1():
    n = 40
    probs = random_probs(n, len(CLASSES), seed=1)
    labels = torch.randint(len(CLASSES), (n,), generator=torch.Generator().manual_seed(2))
    true = [CLASSES[i] for i in labels]
    result = summed_rank_accuracy(probs, CLASSES, true)
    plain_top1 = (probs.argmax(dim=1) == labels).float().mean().item()
    plain_top5 = (probs.topk(5).indices == labels[:, None]).any(dim=1).float().mean().item()
    assert result["species"]["top1"] == pytest.approx(plain_top1)
    assert result["species"]["top5"] == pytest.approx(plain_top5)
    assert result["species"]["images"] == n and result["species"]["groups"] == len(CLASSES)
    for rank, r in result.items():
        assert r["top5"] >= r["top1"], rank


def test_summed_accuracy_wrong_species_right_genus():
    # All images are crows, all put most mass on the raven: wrong species, right genus.
    probs = torch.zeros(3, len(CLASSES))
    probs[:, CLASSES.index(RAVEN)] = 0.6
    probs[:, CLASSES.index(CROW)] = 0.3
    probs[:, CLASSES.index(ROSE)] = 0.1
    result = summed_rank_accuracy(probs, CLASSES, [CROW] * 3, ranks=("genus", "species"))
    assert result["species"]["top1"] == 0.0 and result["species"]["top5"] == 1.0
    assert result["genus"]["top1"] == 1.0


def test_summed_accuracy_skips_missing_ranks_and_counts_open_set():
    probs = random_probs(4, len(CLASSES))
    unseen = tx(*RAVEN.ranks[:-1], "frugilegus")  # the rook: a genus we have, a species we lack
    true = [RAVEN, CORVUS_SP, unseen, ROSE]
    result = summed_rank_accuracy(probs, CLASSES, true)
    assert result["species"]["images"] == 3  # CORVUS_SP does not take part at species
    assert result["genus"]["images"] == 4
    assert result["species"]["absent"] == 1 and result["genus"]["absent"] == 0
    one_kingdom = [t for t in CLASSES if t.kingdom == "Animalia"]
    probs = random_probs(2, len(one_kingdom))
    assert "kingdom" not in summed_rank_accuracy(probs, one_kingdom, [RAVEN, BEE])  # a single group
    with pytest.raises(ValueError, match="true taxa"):
        summed_rank_accuracy(probs, one_kingdom, [RAVEN])


def test_mistake_severity_hand_built():
    one = mistake_severity([RAVEN], [CROW])
    assert one["mistakes"] == 1 and one["mean_mistake_height"] == 1.0
    result = mistake_severity([RAVEN, RAVEN, ROSE, MAGPIE], [RAVEN, CROW, BEE, CORVUS_SP])
    # heights 0, 1, 7; the last image is not known to species and is skipped
    assert result["images"] == 3 and result["skipped"] == 1 and result["mistakes"] == 2
    assert result["mean_mistake_height"] == pytest.approx((1 + 7) / 2)
    assert result["mean_height"] == pytest.approx((0 + 1 + 7) / 3)
    assert result["histogram"] == [1, 1, 0, 0, 0, 0, 0, 1]
    perfect = mistake_severity([RAVEN, ROSE], [RAVEN, ROSE])
    assert perfect["mistakes"] == 0 and perfect["mean_mistake_height"] is None and perfect["mean_height"] == 0
    with pytest.raises(ValueError, match="predictions"):
        mistake_severity([RAVEN], [])


def test_rank_consistency_hand_built():
    g = lambda t, r: lineage(t, r)  # noqa: E731
    preds = {
        # image 0 nests (raven family, genus); image 1 jumps to the rose genus; image 2 nests via
        # the fox; image 3 names a Corvus under Paridae, whose lineage does not extend Corvidae.
        "species": [g(RAVEN, "species"), g(ROSE, "species"), g(FOX, "species"), g(CORVUS_HOMONYM, "species")],
        "family": [g(RAVEN, "family"), g(MAGPIE, "family"), g(FOX, "family"), g(MAGPIE, "family")],
        "genus": [g(CROW, "genus"), g(ROSE, "genus"), g(FOX, "genus"), g(RAVEN, "genus")],
    }
    assert rank_consistency(preds) == pytest.approx(2 / 4)
    # An image not classified at a rank is judged on the ranks it has.
    preds["genus"] = [None, None, g(FOX, "genus"), None]
    assert rank_consistency(preds) == pytest.approx(2 / 4)  # image 1: rose species under Corvidae
    assert rank_consistency({"family": preds["family"]}) == 1.0  # one rank alone


def test_rank_consistency_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown ranks"):
        rank_consistency({"tribe": [("A",)]})
    with pytest.raises(ValueError, match="no ranks"):
        rank_consistency({})
    with pytest.raises(ValueError, match="one prediction per image"):
        rank_consistency({"kingdom": [("A",)], "phylum": []})
    with pytest.raises(ValueError, match="lineage tuple"):
        rank_consistency({"kingdom": [("Animalia",)], "genus": ["Corvus"]})
