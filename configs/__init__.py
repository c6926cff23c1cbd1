"""tolclip's Hydra configs, shipped with the package (this folder is `tolclip.configs` once installed)."""
