"""What the build tracks per input: an `Entry` for each scanned item, `Outcome` lists for those left out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class Outcome:
    """Rows of `skipped.csv` or `excluded.csv`: which input left the build, at which stage, and why."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, entry: Entry, stage: str, reason: str) -> None:
        row = {"key": entry.key, "source": entry.source, "source_id": entry.source_id}
        self.rows.append({**row, "stage": stage, "reason": reason})
