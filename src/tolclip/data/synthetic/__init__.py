"""The embedded default data: a seeded synthetic tree of life (tree -> rendered images -> shards).

`make train` must train a small CLIP on a 2-core CPU in minutes without downloading anything, so the
project generates its own data: `tree` invents the taxonomy and its inherited traits, `render` draws
an organism, `dataset` writes the splits as shards.
"""

from tolclip.data.synthetic.dataset import (
    MANIFEST,
    SPLITS,
    build_synthetic_dataset,
    cached_manifest,
    load_manifest,
)
from tolclip.data.synthetic.draw import render
from tolclip.data.synthetic.tree import SyntheticConfig, SyntheticSpecies, Traits, build_tree

__all__ = [
    "MANIFEST",
    "SPLITS",
    "SyntheticConfig",
    "SyntheticSpecies",
    "Traits",
    "build_synthetic_dataset",
    "build_tree",
    "cached_manifest",
    "load_manifest",
    "render",
]
