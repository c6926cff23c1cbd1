"""Where tolclip's Hydra configs are.

`configs/` sits at the top of the repository and is installed inside the package as
`tolclip.configs` (pyproject maps it), so an editable checkout and an installed wheel find the same
files through the same module name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CONFIG_PACKAGE = "tolclip.configs"
# For @hydra.main and hydra.initialize_config_module: found through the import system, not a path.
CONFIG_PATH = f"pkg://{CONFIG_PACKAGE}"


def config_dir() -> Path:
    """The folder holding train.yaml and the config groups (for tools that read one file)."""
    return Path(str(resources.files(CONFIG_PACKAGE)))
