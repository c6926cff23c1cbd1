"""What a user names on the command line: files, folders (searched recursively) and glob patterns.

Folders contribute the files whose suffix is an image type; a file named explicitly is taken whatever its
suffix (a photo saved as ``.dat`` still works; a text file named ``.jpg`` fails later with its reason).
Arguments that match nothing are not dropped: they come back as problems for the output to report.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jp2", ".ppm", ".pgm", ".pbm"}
)


@dataclass
class Inputs:
    paths: list[str] = field(default_factory=list)  # image files in argument order, each once
    problems: list[tuple[str, str]] = field(default_factory=list)  # (argument, reason)


def _folder_images(folder: Path) -> list[str]:
    found = [
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink())
    ]
    return [str(p) for p in sorted(found)]


def _expand(arg: str) -> tuple[list[str], str]:
    path = Path(arg).expanduser()
    if path.is_dir():
        files = _folder_images(path)
        return files, "" if files else "folder holds no image files"
    if path.exists() or path.is_symlink():
        return [str(path)], ""
    if glob.has_magic(arg):
        files = []
        for match in sorted(glob.glob(os.path.expanduser(arg), recursive=True)):
            files += _folder_images(Path(match)) if Path(match).is_dir() else [match]
        return files, "" if files else "pattern matches no files"
    return [], "file not found"


def expand_inputs(args: list[str]) -> Inputs:
    """Every image file the arguments name, in order, without repeats; arguments that name none are problems."""
    out = Inputs()
    seen: set[str] = set()
    for arg in args:
        files, problem = _expand(arg)
        if problem:
            out.problems.append((arg, problem))
        for f in files:
            if f not in seen:
                seen.add(f)
                out.paths.append(f)
    return out
