"""``casia-webface``: one folder per identity, or insightface's packed ``train.rec``/``train.idx``.

Folder layout: ``<root>/0000045/001.jpg`` -> identity ``0000045``, key ``0000045_001``.
Packed layout (``<root>/train.rec`` or ``<root>/faces_webface_112x112/train.rec``, with its
``.idx``): identity = class label zero-padded to 7 digits, key = ``<identity>_<index:07d>``,
location = ``<rec path relative to root>#<byte offset>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Iterator

from .base import Entry, Source, resolve_collisions
from .folder import FolderSource
from .recordio import RecordIOReader

PACKED_DIRS = ("", "faces_webface_112x112")
ID_WIDTH = 7


def find_recordio(root: Path) -> Path | None:
    """The ``train.rec`` of a packed layout under ``root``, or None for a folder layout."""
    for sub in PACKED_DIRS:
        rec = root / sub / "train.rec"
        if rec.is_file():
            if not rec.with_suffix(".idx").is_file():
                raise FileNotFoundError(f"{rec} has no train.idx beside it")
            return rec
    return None


def record_entry(rec_rel: str, index: int, offset: int, label: float | None, error: str) -> Entry:
    """The entry of one image record (an error entry when its label is unusable)."""
    location = f"{rec_rel}#{offset}"
    meta = {"record_index": index}
    if not error and (label is None or label < 0 or label != int(label)):
        error = f"bad_label: {label}"
    if error:
        return Entry(f"rec_{index:07d}", "unknown", location, meta, error)
    identity = f"{int(label):0{ID_WIDTH}d}"
    return Entry(f"{identity}_{index:07d}", identity, location, meta)


class CasiaSource(FolderSource):
    """CASIA-WebFace as identity folders or as a packed RecordIO file."""

    name: ClassVar[str] = "casia-webface"
    allow_flat: ClassVar[bool] = False

    def __init__(self, input: Path | str | None) -> None:
        Source.__init__(self, input)
        rec = find_recordio(self.root)
        self.reader = RecordIOReader(rec) if rec else None
        self.rec_rel = rec.relative_to(self.root).as_posix() if rec else ""
        if self.reader is None:
            try:
                self._check_layout()
            except ValueError:
                raise ValueError(
                    f"{self.root}: expected one folder per identity (0000045/001.jpg) "
                    "or faces_webface_112x112/train.rec + train.idx"
                ) from None

    @property
    def layout(self) -> str:
        return "recordio" if self.reader else "folder"

    def list(self) -> Iterator[Entry]:
        if self.reader is None:
            yield from super().list()
            return
        entries = [
            record_entry(self.rec_rel, r.index, r.offset, r.label, r.error)
            for r in self.reader.images()
        ]
        yield from resolve_collisions(entries, order=lambda e: e.meta["record_index"])

    def read(self, location: str) -> bytes:
        if self.reader is None:
            return super().read(location)
        path, sep, offset = location.rpartition("#")
        if not sep or path != self.rec_rel or not offset.isdigit():
            raise ValueError(f"not a location in {self.rec_rel}: {location!r}")
        return self.reader.read_image(int(offset))

    def stat(self, location: str) -> tuple[int | None, int | None]:
        if self.reader is None:
            return super().stat(location)
        _, mtime = super().stat(self.rec_rel)  # a record has no size of its own: the .rec's mtime
        return None, mtime

    def describe(self) -> dict:
        return {**super().describe(), "layout": self.layout}
