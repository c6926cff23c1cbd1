"""Use a model: name the organisms in photos (Tree-of-Life or custom labels), embed images and labels.

The flow: inputs (files, folders, globs, PIL images) -> encode (batched, loader workers, per-file
failures kept) -> a label index (class-text embeddings of taxa or labels, cached by model and taxa
fingerprint) -> classify (probabilities, summed per rank, top-k rows) -> output (table, CSV, JSON,
parquet). The classifiers mirror pybioclip's names.
"""

from tolclip.prediction.classify import (
    CustomLabelsBinningClassifier,
    CustomLabelsClassifier,
    TreeOfLifeClassifier,
)
from tolclip.prediction.encode import ImageEmbeddings, embed_images
from tolclip.prediction.index import LabelIndex, build_index, load_index

__all__ = [
    "CustomLabelsBinningClassifier",
    "CustomLabelsClassifier",
    "ImageEmbeddings",
    "LabelIndex",
    "TreeOfLifeClassifier",
    "build_index",
    "embed_images",
    "load_index",
]
