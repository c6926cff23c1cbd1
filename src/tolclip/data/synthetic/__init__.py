"""The embedded default data: a seeded synthetic tree of life (tree -> rendered images -> shards)."""

from tolclip.data.synthetic.dataset import (
    SPLITS,
    SyntheticConfig,
    _image_rng,
    build_synthetic_dataset,
    build_tree,
    load_manifest,
    main,
    render,
)

__all__ = ["SPLITS", "SyntheticConfig", "_image_rng", "build_synthetic_dataset", "build_tree", "load_manifest", "main", "render"]
