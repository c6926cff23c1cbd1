"""Few-shot protocol: SimpleShot and the linear probe against independent, naive implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tolclip.evaluation.few_shot import (
    FewShotResult,
    cl2n,
    fold_indices,
    linear_probe,
    nearest_centroid,
    simpleshot,
)

# Uneven classes: "a" (1 image) is too small for any k, "c" (5 images) is too small for k=5 only.
SIZES = {"a": 1, "b": 3, "c": 5, "d": 6, "e": 9, "f": 14, "g": 23, "h": 31}


def uneven_data(dim: int = 12, spread: float = 0.7, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Overlapping Gaussian classes (accuracy strictly between chance and 1), labels interleaved."""
    rng = np.random.default_rng(seed)
    labels = [name for name, n in SIZES.items() for _ in range(n)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    centres = {name: rng.normal(size=dim) * spread for name in SIZES}
    x = np.stack([centres[name] + rng.normal(size=dim) for name in labels]).astype(np.float32)
    return x, labels


# ---------------------------------------------------------------------------------------------
# The reference: the protocol written out directly, one image, one class, one number at a time.
# It deliberately uses nothing from tolclip.evaluation.few_shot.
# ---------------------------------------------------------------------------------------------


def naive_class_members(labels) -> list[list[int]]:
    """Image indices of each class, classes in order of first appearance, indices ascending."""
    order: list = []
    members: dict = {}
    for i, label in enumerate(labels):
        if label not in members:
            order.append(label)
            members[label] = []
        members[label].append(i)
    return [members[label] for label in order]


def naive_shuffle(indices: list[int], fold: int) -> list[int]:
    perm = np.random.default_rng(fold).permutation(len(indices))
    return [indices[int(p)] for p in perm]


def naive_centred_unit(row: list[float], mean: list[float]) -> list[float]:
    v = [row[d] - mean[d] for d in range(len(row))]
    norm = math.sqrt(sum(a * a for a in v))
    return [a / norm for a in v]


def naive_simpleshot(features, labels, k: int, folds: int) -> tuple[list[float], int, int, int]:
    rows = [[float(v) for v in row] for row in np.asarray(features, dtype=np.float64)]
    dim = len(rows[0])
    classes = naive_class_members(labels)
    kept = [c for c in range(len(classes)) if len(classes[c]) >= k + 1]
    accuracies = []
    n_queries = 0
    for fold in range(folds):
        support: list[tuple[int, int]] = []  # (image, class)
        query: list[tuple[int, int]] = []
        for c in kept:
            shuffled = naive_shuffle(classes[c], fold)
            support += [(i, c) for i in shuffled[:k]]
            query += [(i, c) for i in shuffled[k:]]
        mean = [0.0] * dim
        for i, _ in support:
            for d in range(dim):
                mean[d] += rows[i][d]
        mean = [m / len(support) for m in mean]

        centroids = {}
        for c in kept:
            members = [naive_centred_unit(rows[i], mean) for i, cc in support if cc == c]
            centroids[c] = [sum(v[d] for v in members) / len(members) for d in range(dim)]
        correct = 0
        for i, true_class in query:
            v = naive_centred_unit(rows[i], mean)
            best, best_distance = None, math.inf
            for c in kept:  # ascending class id: the first of equal distances wins
                distance = math.sqrt(sum((v[d] - centroids[c][d]) ** 2 for d in range(dim)))
                if distance < best_distance:
                    best, best_distance = c, distance
            correct += best == true_class
        accuracies.append(correct / len(query))
        n_queries = len(query)
    return accuracies, len(kept), len(classes) - len(kept), n_queries


def naive_probe_split(labels, fold: int, train_fraction: float) -> tuple[list[int], list[int]]:
    train: list[int] = []
    test: list[int] = []
    for members in naive_class_members(labels):
        if len(members) < 2:
            continue
        shuffled = naive_shuffle(members, fold)
        n_train = min(len(members) - 1, max(1, math.floor(train_fraction * len(members) + 1e-9)))
        train += shuffled[:n_train]
        test += shuffled[n_train:]
    return train, test


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5])
def test_simpleshot_matches_naive_reference(k):
    x, labels = uneven_data()
    result = simpleshot(x, labels, k=k, folds=5)
    folds, classes, left_out, queries = naive_simpleshot(x, labels, k=k, folds=5)
    assert result.folds == folds  # exactly, fold by fold
    assert (result.classes, result.classes_left_out, result.queries) == (classes, left_out, queries)
    assert result.method == "simpleshot" and result.k == k
    # The comparison is only meaningful if the numbers are neither trivial nor all alike.
    assert all(0.0 < a < 1.0 for a in folds) and len(set(folds)) > 1
    expected_left_out = sum(n < k + 1 for n in SIZES.values())
    assert result.classes_left_out == expected_left_out and result.classes == len(SIZES) - expected_left_out


def test_nearest_centroid_matches_naive_predictions_per_query():
    x, labels = uneven_data(seed=3)
    codes = np.array([sorted(SIZES).index(name) for name in labels])
    support, query = fold_indices(labels, 1, 2)
    s, q = cl2n(x[support], x[query])
    pred = nearest_centroid(s, codes[support], q)
    for row, p in zip(q, pred, strict=True):
        distances = {}
        for c in sorted(set(codes[support].tolist())):
            members = [s[j] for j in range(len(support)) if codes[support][j] == c]
            centroid = [sum(float(m[d]) for m in members) / len(members) for d in range(s.shape[1])]
            distances[c] = sum((float(row[d]) - centroid[d]) ** 2 for d in range(s.shape[1]))
        assert p == min(distances, key=distances.get)


def test_cl2n_centres_on_the_support_mean_and_normalises():
    rng = np.random.default_rng(1)
    s, q = rng.normal(size=(7, 5)) + 3.0, rng.normal(size=(4, 5))
    s_out, q_out = cl2n(s, q)
    np.testing.assert_allclose(np.linalg.norm(s_out, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(q_out, axis=1), 1.0)
    # Each row points along (row - support mean): unnormalised lengths recover the centred support.
    centred = s - s.mean(axis=0)
    np.testing.assert_allclose(s_out * np.linalg.norm(centred, axis=1, keepdims=True), centred, atol=1e-12)
    np.testing.assert_allclose(
        q_out * np.linalg.norm(q - s.mean(axis=0), axis=1, keepdims=True), q - s.mean(axis=0), atol=1e-12
    )
    # Translating everything changes nothing; the query's own mean plays no part.
    shift = rng.normal(size=5) * 10
    np.testing.assert_allclose(cl2n(s + shift, q + shift)[1], q_out, atol=1e-12)
    # A query equal to the support mean has no direction: it stays zero rather than becoming NaN.
    _, q_mean = cl2n(s, s.mean(axis=0, keepdims=True))
    assert np.all(q_mean == 0.0)


def test_fold_indices_protocol():
    _, labels = uneven_data()
    k = 5
    support, query = fold_indices(labels, k, 0)
    kept = {name for name, n in SIZES.items() if n >= k + 1}
    # Disjoint, covering every image of the kept classes and nothing else; k support per class.
    assert not set(support.tolist()) & set(query.tolist())
    assert sorted(support.tolist() + query.tolist()) == [i for i, name in enumerate(labels) if name in kept]
    for name in kept:
        assert sum(labels[i] == name for i in support) == k
    # Different folds draw different support sets; the same fold draws the same one.
    other, _ = fold_indices(labels, k, 1)
    assert set(support.tolist()) != set(other.tolist())
    again, again_query = fold_indices(labels, k, 0)
    assert np.array_equal(support, again) and np.array_equal(query, again_query)


def test_well_separated_clusters_are_perfect():
    rng = np.random.default_rng(2)
    centres = np.eye(6) * 100.0
    labels = [c for c in range(6) for _ in range(12)]
    x = np.stack([centres[c] + rng.normal(size=6) for c in labels])
    for k in (1, 5):
        assert simpleshot(x, labels, k).folds == [1.0] * 5
    assert linear_probe(x, labels, C=10.0).folds == [1.0] * 5


def test_class_independent_features_give_chance_not_perfection():
    labels = [c for c in range(4) for _ in range(10)]
    # Identical features: every distance ties, so every query goes to the first class.
    same = simpleshot(np.ones((40, 8)), labels, k=5)
    assert same.folds == [5 / 20] * 5
    # Noise unrelated to the label: far from perfect.
    noise = np.random.default_rng(4).normal(size=(40, 8))
    assert simpleshot(noise, labels, k=5).mean < 0.6
    assert linear_probe(noise, labels).mean < 0.6


def test_deterministic_and_input_types_agree():
    x, labels = uneven_data()
    first = simpleshot(x, labels, k=5)
    assert simpleshot(x, labels, k=5) == first
    assert simpleshot(torch.from_numpy(x), labels, k=5) == first
    # Keys are only names: ints, strings or tuples in the same first-seen order give the same result.
    as_int = {name: i for i, name in enumerate(dict.fromkeys(labels))}
    assert simpleshot(x, [as_int[n] for n in labels], k=5) == first
    assert simpleshot(x, [("Animalia", n) for n in labels], k=5) == first
    assert linear_probe(x, labels) == linear_probe(torch.from_numpy(x), [as_int[n] for n in labels])


@pytest.mark.parametrize("train_fraction", [0.5, 0.3])
def test_linear_probe_equals_sklearn_on_the_same_split(train_fraction):
    x, labels = uneven_data(spread=1.2)
    result = linear_probe(x, labels, folds=3, train_fraction=train_fraction, C=2.0, max_iter=500)
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    y = np.array(labels)
    expected = []
    for fold in range(3):
        train, test = naive_probe_split(labels, fold, train_fraction)
        clf = LogisticRegression(C=2.0, max_iter=500, solver="lbfgs").fit(unit[train], y[train])
        expected.append(float(np.mean(clf.predict(unit[test]) == y[test])))
    assert result.folds == expected
    assert result.method == "linear_probe" and result.k is None
    assert result.classes_left_out == 1 and result.classes == len(SIZES) - 1  # "a" has one image
    assert result.queries == len(naive_probe_split(labels, 0, train_fraction)[1])
    assert result.mean > 1 / result.classes  # separable enough to beat chance


def test_mean_and_population_std():
    r = FewShotResult("simpleshot", 1, [0.5, 1.0], classes=2, classes_left_out=0, queries=4)
    assert r.mean == 0.75 and r.std == 0.25


def test_classes_too_small_never_crash():
    labels = ["x", "y", "y", "z"]
    x = np.random.default_rng(5).normal(size=(4, 3))
    none_kept = simpleshot(x, labels, k=5)
    assert none_kept.classes == 0 and none_kept.classes_left_out == 3 and none_kept.queries == 0
    assert all(math.isnan(a) for a in none_kept.folds)
    assert not none_kept.computed and "6 images (5 support + 1 query)" in none_kept.reason
    # One usable class used to score a trivial 100% (issue 9: a headline that overstates); fewer than
    # two classes is now "not computed" with the reason, as for none.
    one_kept = simpleshot(x, labels, k=1)
    assert one_kept.classes == 1 and one_kept.classes_left_out == 2
    assert all(math.isnan(a) for a in one_kept.folds) and not one_kept.computed and one_kept.chance is None
    assert "only 1 of 3 classes" in one_kept.reason
    probe = linear_probe(x, labels)
    assert probe.classes == 1 and all(math.isnan(a) for a in probe.folds) and "only 1 of 3" in probe.reason


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, y: simpleshot(x, y[:-1], k=1), "must match"),
        (lambda x, y: simpleshot(x, y, k=0), "k must be"),
        (lambda x, y: simpleshot(x, y, k=-1), "k must be"),
        (lambda x, y: simpleshot(x, y, k=1, folds=0), "folds must be"),
        (lambda x, y: simpleshot(x[:0], y[:0], k=1), "empty"),
        (lambda x, y: simpleshot(x[0], y, k=1), "2-D"),
        (lambda x, y: simpleshot(np.full_like(x, np.nan), y, k=1), "NaN"),
        (lambda x, y: simpleshot(x, [[0]] * len(y), k=1), "hashable"),
        (lambda x, y: fold_indices(y, 0, 0), "k must be"),
        (lambda x, y: fold_indices(y, 1, -1), "fold must be"),
        (lambda x, y: linear_probe(x, y[:-1]), "must match"),
        (lambda x, y: linear_probe(x[:0], y[:0]), "empty"),
        (lambda x, y: linear_probe(x, y, train_fraction=1.0), "train_fraction"),
        (lambda x, y: linear_probe(x, y, C=0.0), "C must be"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message):
    x, labels = uneven_data()
    with pytest.raises(ValueError, match=message):
        call(x, labels)
