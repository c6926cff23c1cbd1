"""What the build tracks per input while it streams through: an `Entry` for each scanned item."""

from __future__ import annotations

from dataclasses import dataclass

from tolclip.core.taxonomy import Taxon
from tolclip.curate.sources import SourceRecord


@dataclass
class Entry:
    """One scanned input and its fate."""

    key: str
    source: str
    source_id: str
    record: SourceRecord | None = None
    taxon: Taxon | None = None
    status: str = ""  # resolution status
    # Decided before the image stage: ("skip" | "exclude", stage, reason); reported in scan order.
    fate: tuple[str, str, str] | None = None
