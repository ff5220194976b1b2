"""``sample``: nine real face photos shipped with the package (3 LFW identities x 3 photos).

For demos, smoke runs and tests without any dataset; ``input`` is ignored. See
``pipeline/data/sample/ATTRIBUTION.md`` for where the photos come from.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from .folder import FolderSource

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"


class SampleSource(FolderSource):
    """The bundled sample photos, laid out as identity folders."""

    name: ClassVar[str] = "sample"
    allow_flat: ClassVar[bool] = False

    def __init__(self, input: Path | str | None = None) -> None:
        if not SAMPLE_DIR.is_dir():
            raise FileNotFoundError(f"bundled sample photos missing: {SAMPLE_DIR} (package data)")
        super().__init__(SAMPLE_DIR)
