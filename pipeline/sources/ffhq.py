"""``ffhq``: Flickr-Faces-HQ, one identity per image.

Input: the folder holding ``images1024x1024/`` or that images folder itself. Images are
``NNNNN.png``, either in thousand-folders (``00000/00000.png``, ``01000/01000.png``, ...) or flat.
Identity = key = ``ffhq_<number:05d>`` (a non-numeric stem gives ``ffhq_<stem>``), so keys do not
depend on the folder layout. When ``ffhq-dataset-v2.json`` sits in the input folder or its
parent, each image's ``category`` and ``metadata`` (photo URL, author, licence, dates) go to
``meta["ffhq"]``; landmark arrays are left out.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Iterator

from .base import Entry, Source, is_image_name, resolve_collisions, sanitize_key
from .folder import log_listing, walk

log = logging.getLogger(__name__)

IMAGE_DIR = "images1024x1024"
METADATA_FILE = "ffhq-dataset-v2.json"
KEPT_FIELDS = ("category", "metadata")
MAX_DEPTH = 2


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """Keep only the small fields of a per-image record (json object hook; the rest is freed early)."""
    if "image" in obj and ("metadata" in obj or "category" in obj):
        return {k: obj[k] for k in KEPT_FIELDS if k in obj}
    return obj


def load_metadata(path: Path) -> dict[int, dict[str, Any]]:
    """Image number -> kept fields from ``ffhq-dataset-v2.json``; empty if unreadable."""
    try:
        with path.open("rb") as f:
            data = json.load(f, object_hook=_slim)
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring %s: not a JSON object keyed by image index", path)
        return {}
    return {int(k): v for k, v in data.items() if k.isdigit() and isinstance(v, dict)}


def image_number(location: str) -> int | None:
    stem = PurePosixPath(location).stem
    return int(stem) if stem.isdigit() else None


class FFHQSource(Source):
    """FFHQ images (nested or flat), each its own identity, with optional JSON metadata."""

    name: ClassVar[str] = "ffhq"

    def __init__(self, input: Path | str | None) -> None:
        super().__init__(input)
        nested = self.root / IMAGE_DIR
        self.image_dir = nested if nested.is_dir() else self.root
        if not self._looks_like_images(self.image_dir):
            raise ValueError(f"{self.root}: expected {IMAGE_DIR}/ or a folder of FFHQ images")
        self.metadata_file = next((p for p in (self.root / METADATA_FILE, self.root.parent / METADATA_FILE)
                                   if p.is_file()), None)

    @staticmethod
    def _looks_like_images(folder: Path) -> bool:
        """Image files directly inside, or in a visible sub-folder."""
        for child in folder.iterdir():
            if child.name.startswith("."):
                continue
            if child.is_file() and is_image_name(child.name):
                return True
            if child.is_dir() and any(is_image_name(p.name) for p in child.iterdir()):
                return True
        return False

    def list(self) -> Iterator[Entry]:
        metadata = load_metadata(self.metadata_file) if self.metadata_file else {}
        prefix = self.image_dir.relative_to(self.root).as_posix()
        entries = []
        found = walk(self.image_dir)
        for rel in found.files:
            if len(PurePosixPath(rel).parts) > MAX_DEPTH:
                log.warning("skipping %s: deeper than FFHQ's thousand-folders", rel)
                continue
            number = image_number(rel)
            stem = f"{number:05d}" if number is not None else PurePosixPath(rel).stem
            key = sanitize_key("ffhq", stem)
            meta = {"ffhq": metadata[number]} if number in metadata else {}
            location = rel if prefix == "." else f"{prefix}/{rel}"
            entries.append(Entry(key=key, identity=key, location=location, meta=meta,
                                 error=found.errors.get(rel, "")))
        self.skipped = dict(found.skipped)
        log_listing(self.image_dir, len(entries), found.skipped)
        yield from resolve_collisions(entries)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "metadata": self.metadata_file is not None}
