"""``celeba``: CelebA images with ``identity_CelebA.txt`` (and ``list_attr_celeba.txt`` if present).

Accepted layouts (files either in the root or in the official ``Img/`` and ``Anno/`` folders):
``img_align_celeba/`` (preferred) or ``img_celeba/`` for the images, ``identity_CelebA.txt``
with ``000001.jpg 2880`` lines. Identity = the id zero-padded to 5 digits (CelebA has 10,177),
key = ``<identity>_<stem>``. The 40 binary attributes go to ``meta["celeba_attributes"]`` as
``{name: bool}``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import ClassVar, Iterator

from .base import Entry, Source, resolve_collisions, sanitize_key

log = logging.getLogger(__name__)

IMAGE_DIRS = ("img_align_celeba", "img_celeba", "img_align_celeba_png")
IDENTITY_FILE = "identity_CelebA.txt"
ATTR_FILE = "list_attr_celeba.txt"
ID_WIDTH = 5


def _find(root: Path, name: str, subdirs: tuple[str, ...]) -> Path | None:
    for sub in ("", *subdirs):
        path = root / sub / name
        if path.exists():
            return path
    return None


def find_image_dir(root: Path) -> Path | None:
    """The image folder, looking through Kaggle's doubled ``img_align_celeba/img_align_celeba``."""
    for name in IMAGE_DIRS:
        path = _find(root, name, ("Img",))
        if path is not None and path.is_dir():
            doubled = path / name
            return doubled if doubled.is_dir() else path
    return None


def parse_identities(path: Path) -> list[tuple[str, str]]:
    """``(file name, identity id)`` pairs from ``identity_CelebA.txt``, malformed lines skipped."""
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            log.warning("%s:%d: skipping malformed line %r", path, number, line)
            continue
        pairs.append((fields[0], fields[1]))
    return pairs


def parse_attributes(path: Path) -> dict[str, dict[str, bool]]:
    """File name -> {attribute: bool} from ``list_attr_celeba.txt`` (count, names, then rows)."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        return {}
    names = lines[1].split()
    table = {}
    for line in lines[2:]:
        fields = line.split()
        if len(fields) != len(names) + 1:
            if fields:
                log.warning("%s: skipping row with %d values: %r", path, len(fields) - 1, line[:40])
            continue
        table[fields[0]] = {name: value == "1" for name, value in zip(names, fields[1:])}
    return table


class CelebASource(Source):
    """CelebA: identities from identity_CelebA.txt, attributes from list_attr_celeba.txt."""

    name: ClassVar[str] = "celeba"

    def __init__(self, input: Path | str | None) -> None:
        super().__init__(input)
        image_dir = find_image_dir(self.root)
        identity_file = _find(self.root, IDENTITY_FILE, ("Anno",))
        if image_dir is None or identity_file is None:
            raise ValueError(
                f"{self.root}: expected img_align_celeba/ (or img_celeba/) and {IDENTITY_FILE}"
            )
        self.image_dir = image_dir
        self.identity_file = identity_file
        self.attr_file = _find(self.root, ATTR_FILE, ("Anno",))

    def list(self) -> Iterator[Entry]:
        attributes = parse_attributes(self.attr_file) if self.attr_file else {}
        with os.scandir(self.image_dir) as it:
            present = {d.name for d in it if not d.name.startswith(".")}
        prefix = self.image_dir.relative_to(self.root).as_posix()
        entries = []
        for file_name, id_ in parse_identities(self.identity_file):
            stem = PurePosixPath(file_name).stem
            on_disk = file_name
            if file_name not in present and f"{stem}.png" in present:  # the PNG variant
                on_disk = f"{stem}.png"
            identity = f"{int(id_):0{ID_WIDTH}d}"
            meta = {"celeba_attributes": attributes[file_name]} if file_name in attributes else {}
            entries.append(
                Entry(
                    key=sanitize_key(identity, stem),
                    identity=identity,
                    location=f"{prefix}/{on_disk}",
                    meta=meta,
                    error="" if on_disk in present else "missing_file",
                )
            )
        yield from resolve_collisions(entries)

    def describe(self) -> dict:
        return {**super().describe(), "attributes": self.attr_file is not None}
