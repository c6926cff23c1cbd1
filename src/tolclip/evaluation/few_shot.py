"""Few-shot evaluation on fixed image features: SimpleShot (CL2N + nearest centroid) and a linear probe.

This is the protocol BioCLIP reports for its few-shot columns. It works on precomputed features
``[N, D]`` and one label per image; no model is involved. Everything below is exact enough to
reproduce the numbers in another implementation.

Labels. Labels may be ints or any hashable keys (strings, tuples). They are mapped to class ids
``0, 1, ...`` in order of first appearance, also when they are ints. Class ids matter only for
tie-breaking (below) and for the order of the indices ``fold_indices`` returns.

Shuffles (shared by both methods). For fold ``f`` (``f = 0, 1, ..., folds - 1``) and each class
separately, take that class's image indices in ascending order, draw
``numpy.random.default_rng(f).permutation(n_c)`` from a *fresh* generator (one per class, so a
class's shuffle does not depend on the other classes), and reorder the indices by it:
``shuffled = idx[perm]``.

SimpleShot with ``k`` shots. A k-shot episode needs k support images plus at least one query per
class (``k + 1`` images). A class with fewer cannot give a query, so it is left out of that ``k`` entirely: its images are neither support nor query, its centroid does not
compete, and the count is reported as ``classes_left_out``. For each remaining class the first ``k``
shuffled indices are support and the rest are queries. Features are taken in float64, then CL2N:
subtract the mean of the support features of the fold (all kept classes; SimpleShot's paper uses a
base-set mean, but fixed-feature evaluation has no base set), then L2-normalise every row (a row of norm below 1e-12 is left as is, not divided). A class centroid is the mean of its
normalised support rows (not renormalised). A query is predicted as the class whose centroid is
nearest in Euclidean distance, computed in float64 as ``|c|^2 - 2 q.c`` (same argmin as the
distance); exact ties go to the smallest class id. The fold's accuracy is
correct / queries.

Linear probe. Features are L2-normalised per image (a per-row operation, so nothing leaks from
the test split), in float64. For each class the first ``n_train = min(n_c - 1, max(1,
floor(train_fraction * n_c + 1e-9)))`` shuffled indices train and the rest test; classes with fewer
than 2 images are left out. A multinomial scikit-learn ``LogisticRegression(solver="lbfgs", C,
max_iter)`` is fitted on the training rows, ordered class by class (class id order), then by
shuffled order, and scored on the test rows.

Reporting. Accuracy is a fraction in [0, 1], one per fold; ``mean`` is their mean and ``std``
their population standard deviation (ddof=0). ``classes`` and ``images`` say what the number was
computed on, ``classes_left_out`` what was too small, ``chance`` is 1 / ``classes`` (uniform guessing
among the classes used). One rule for every measure: with fewer than ``MIN_CLASSES`` (2) usable
classes nothing is computed (a single class would score a meaningless 100%); every fold is NaN,
``computed`` is False and ``reason`` says why (nothing raises: the caller reports it).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from tolclip.evaluation.metrics import l2_normalise

# Fewer usable classes than this and a measure is not computed: one class is trivially 100%.
MIN_CLASSES = 2


@dataclass
class FewShotResult:
    """One evaluation: accuracy per fold as a fraction in [0, 1]."""

    method: str  # "simpleshot" | "linear_probe"
    k: int | None  # shots; None for the linear probe's fraction split
    folds: list[float]
    classes: int  # classes evaluated
    classes_left_out: int  # classes too small for this protocol
    queries: int  # queries (test images) per fold, the same in every fold
    images: int = 0  # images used per fold (support + queries, or train + test)
    reason: str = ""  # why nothing was computed; "" when it was

    @property
    def computed(self) -> bool:
        return self.classes >= MIN_CLASSES

    @property
    def chance(self) -> float | None:
        """Accuracy of uniform guessing among the classes used (the subset, not the whole task)."""
        return 1.0 / self.classes if self.computed else None

    @property
    def mean(self) -> float:
        return float(np.mean(self.folds))

    @property
    def std(self) -> float:
        # Population std (ddof=0): the folds are the whole set of draws we report on.
        return float(np.std(self.folds, ddof=0))


def _as_features(features: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array [N, D], got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features are empty (shape {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x


def _encode_labels(labels: Sequence[Hashable]) -> np.ndarray:
    """Class ids 0, 1, ... in order of first appearance."""
    ids: dict[Hashable, int] = {}
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        if isinstance(label, np.generic):  # np.int64(3) and 3 are one class
            label = label.item()
        try:
            out[i] = ids.setdefault(label, len(ids))
        except TypeError as e:
            raise ValueError(
                f"label {i} ({label!r}) is not hashable: labels must be ints or hashable keys"
            ) from e
    return out


def _checked(
    features: torch.Tensor | np.ndarray, labels: Sequence[Hashable]
) -> tuple[np.ndarray, np.ndarray]:
    x = _as_features(features)
    if len(labels) != x.shape[0]:
        raise ValueError(f"{len(labels)} labels for {x.shape[0]} feature rows: they must match")
    return x, _encode_labels(labels)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _shuffled_classes(codes: np.ndarray, fold: int) -> list[np.ndarray]:
    """Per class id (ascending), its indices shuffled by a fresh default_rng(fold)."""
    order = np.argsort(codes, kind="stable")  # stable: ascending indices within a class
    per_class = np.split(order, np.cumsum(np.bincount(codes))[:-1]) if codes.size else []
    return [idx[np.random.default_rng(fold).permutation(idx.size)] for idx in per_class]


def fold_indices(labels: Sequence[Hashable], k: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Support and query indices of one fold: the first k shuffled images of each class are support.

    Classes with fewer than k + 1 images appear in neither. Indices are grouped by class (first
    appearance order), in shuffled order within a class.
    """
    _check_positive_int("k", k)
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or fold < 0:
        raise ValueError(f"fold must be an int >= 0, got {fold!r}")
    codes = _encode_labels(labels)
    kept = [s for s in _shuffled_classes(codes, fold) if s.size >= k + 1]
    empty = np.empty(0, dtype=np.int64)
    support = np.concatenate([s[:k] for s in kept]) if kept else empty
    query = np.concatenate([s[k:] for s in kept]) if kept else empty
    return support, query


def cl2n(support: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre both sets on the support mean, then L2-normalise each row (float64)."""
    s = np.asarray(support, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"support must be a non-empty 2-D array, got shape {s.shape}")
    if q.ndim != 2 or q.shape[1] != s.shape[1]:
        raise ValueError(f"query must be 2-D with {s.shape[1]} columns like support, got shape {q.shape}")
    mean = s.mean(axis=0, keepdims=True)
    return l2_normalise(s - mean), l2_normalise(q - mean)


def nearest_centroid(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Label of the nearest class centroid (Euclidean) for each query; ties go to the smallest label."""
    s = np.asarray(support, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64)
    y = np.asarray(support_labels)
    if s.ndim != 2 or s.shape[0] == 0 or y.shape != (s.shape[0],):
        raise ValueError(f"need a non-empty 2-D support and one label per row, got {s.shape} and {y.shape}")
    if q.ndim != 2 or q.shape[1] != s.shape[1]:
        raise ValueError(f"query must be 2-D with {s.shape[1]} columns like support, got shape {q.shape}")
    classes, inverse = np.unique(y, return_inverse=True)  # sorted, so argmin's first hit = smallest label
    centroids = np.zeros((classes.size, s.shape[1]))
    np.add.at(centroids, inverse, s)
    centroids /= np.bincount(inverse, minlength=classes.size)[:, None]
    # argmin_c |q - c|^2 = argmin_c (|c|^2 - 2 q.c): one float64 matmul instead of a [Q, C, D] tensor.
    scores = (centroids * centroids).sum(axis=1)[None, :] - 2.0 * (q @ centroids.T)
    pred = np.argmin(scores, axis=1)
    return classes[pred]


def simpleshot(
    features: torch.Tensor | np.ndarray, labels: Sequence[Hashable], k: int, folds: int = 5
) -> FewShotResult:
    """k-shot accuracy per fold with CL2N + nearest centroid (module docstring has the protocol)."""
    _check_positive_int("k", k)
    _check_positive_int("folds", folds)
    x, codes = _checked(features, labels)
    sizes = np.bincount(codes)
    kept = int((sizes >= k + 1).sum())
    if kept < MIN_CLASSES:
        why = _too_few(kept, sizes.size, f"{k + 1} images ({k} support + 1 query)", int(sizes.max()))
        return FewShotResult("simpleshot", k, [math.nan] * folds, kept, sizes.size - kept, 0, 0, why)
    accuracies: list[float] = []
    queries = 0
    for f in range(folds):
        support, query = fold_indices(codes, k, f)
        s, q = cl2n(x[support], x[query])
        pred = nearest_centroid(s, codes[support], q)
        queries = query.size
        accuracies.append(float(np.count_nonzero(pred == codes[query])) / queries)
    images = int(sizes[sizes >= k + 1].sum())  # every image of a kept class is support or query
    return FewShotResult("simpleshot", k, accuracies, kept, sizes.size - kept, queries, images)


def _too_few(kept: int, present: int, need: str, largest: int) -> str:
    """The one wording of "not computed" for every measure."""
    return (
        f"only {kept} of {present} classes have {need}; at least {MIN_CLASSES} are needed "
        f"(largest class: {largest} images)"
    )


def _probe_split(shuffled: list[np.ndarray], train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for s in shuffled:
        if s.size < 2:
            continue
        # The epsilon keeps e.g. 0.29 * 100 = 28.999... from flooring to 28.
        n_train = min(s.size - 1, max(1, math.floor(train_fraction * s.size + 1e-9)))
        train.append(s[:n_train])
        test.append(s[n_train:])
    empty = np.empty(0, dtype=np.int64)
    return (np.concatenate(train), np.concatenate(test)) if train else (empty, empty)


def linear_probe(
    features: torch.Tensor | np.ndarray,
    labels: Sequence[Hashable],
    folds: int = 5,
    train_fraction: float = 0.5,
    C: float = 1.0,
    max_iter: int = 1000,
) -> FewShotResult:
    """Multinomial logistic regression on frozen, L2-normalised features, per fold."""
    _check_positive_int("folds", folds)
    _check_positive_int("max_iter", max_iter)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C!r}")
    x, codes = _checked(features, labels)
    x = l2_normalise(x)
    sizes = np.bincount(codes)
    kept = int((sizes >= 2).sum())
    if kept < MIN_CLASSES:
        why = _too_few(kept, sizes.size, "2 images (1 train + 1 test)", int(sizes.max()))
        return FewShotResult("linear_probe", None, [math.nan] * folds, kept, sizes.size - kept, 0, 0, why)
    accuracies: list[float] = []
    queries = 0
    for f in range(folds):
        train, test = _probe_split(_shuffled_classes(codes, f), train_fraction)
        queries = test.size
        clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs")
        clf.fit(x[train], codes[train])
        accuracies.append(float(np.count_nonzero(clf.predict(x[test]) == codes[test])) / queries)
    images = int(sizes[sizes >= 2].sum())
    return FewShotResult("linear_probe", None, accuracies, kept, sizes.size - kept, queries, images)
