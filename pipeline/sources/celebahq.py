"""``celeba-hq``: CelebAMask-HQ images, identities joined from CelebA, parts merged into ground truth.

Layout (the CelebAMask-HQ archive, optionally with CelebA's annotation files added):

- ``CelebA-HQ-img/<i>.jpg``, i = 0..29999 (1024x1024)
- ``CelebA-HQ-to-CelebA-mapping.txt``: header ``idx orig_idx orig_file``, rows ``0 119613 119614.jpg``
- ``identity_CelebA.txt`` in the root or ``Anno/``: ``000001.jpg 2880`` lines
- attributes from ``CelebAMask-HQ-attribute-anno.txt`` (keyed by the HQ file) or, failing that,
  CelebA's ``list_attr_celeba.txt`` (root or ``Anno/``, joined through the mapping)
- ``CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png`` (512x512, also looked up directly
  in ``CelebAMask-HQ-mask-anno/``)

Identity = the CelebA id zero-padded to 5 digits (the same labels as the ``celeba`` source),
key = ``<identity>_hq<i:05d>``. Without the mapping or identity file (or for an image they do
not cover) every image is its own identity: identity = key = ``hq<i:05d>``, with one warning.
When masks exist, each sample carries ``gtparsing.png`` (``schemas.gt``), in the source frame.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Iterator

import cv2
import numpy as np
from PIL import Image

from schemas import gt
from .base import Entry, Source, is_image_name, resolve_collisions, safe_join, sanitize_key
from .celeba import ATTR_FILE, ID_WIDTH, IDENTITY_FILE, _find, parse_attributes, parse_identities

log = logging.getLogger(__name__)

IMAGE_DIR = "CelebA-HQ-img"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
HQ_ATTR_FILE = "CelebAMask-HQ-attribute-anno.txt"
MASK_DIR = "CelebAMask-HQ-mask-anno"
MASKS_PER_FOLDER = 2000


def parse_mapping(path: Path) -> dict[int, str]:
    """HQ index -> original CelebA file name; the header and malformed rows are skipped."""
    table = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0].isdigit():
            table[int(fields[0])] = fields[2]
    return table


def hq_index(location: str) -> int | None:
    """The CelebA-HQ index of an image path (``CelebA-HQ-img/42.jpg`` -> 42), None if not numeric."""
    stem = PurePosixPath(location).stem
    return int(stem) if stem.isdigit() else None


def merge_parts(parts: dict[str, np.ndarray], size: tuple[int, int] | None = None) -> np.ndarray:
    """One uint8 label map from binary part masks (part name -> grey HxW), in ``gt.PAINT_ORDER``.

    Every mask is brought to the first one's size; ``size`` = (width, height) scales the result
    with nearest neighbour (CelebA-HQ masks are 512x512, the images 1024x1024).
    """
    if not parts:
        raise ValueError("no part masks to merge")
    unknown = set(parts) - set(gt.PART_CLASS)
    if unknown:
        raise ValueError(f"unknown parts: {sorted(unknown)}")
    h, w = next(iter(parts.values())).shape[:2]
    labels = np.zeros((h, w), np.uint8)
    for name in gt.PAINT_ORDER:
        mask = parts.get(name)
        if mask is None:
            continue
        if mask.shape[:2] != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        labels[mask >= gt.MASK_THRESHOLD] = gt.PART_CLASS[name]
    if size is not None and size != (w, h):
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    return labels


def encode_labels(labels: np.ndarray) -> bytes:
    """Lossless grey PNG of a uint8 label map."""
    ok, buf = cv2.imencode(".png", labels)
    if not ok:
        raise ValueError("PNG encoding of the label map failed")
    return buf.tobytes()


class CelebAHQSource(Source):
    """CelebAMask-HQ: HQ images, CelebA identities via the mapping, optional parsing ground truth."""

    name: ClassVar[str] = "celeba-hq"
    files: ClassVar[tuple[str, ...]] = (gt.GT_PARSING,)

    def __init__(self, input: Path | str | None) -> None:
        super().__init__(input)
        self.image_dir = self.root / IMAGE_DIR
        if not self.image_dir.is_dir():
            raise ValueError(f"{self.root}: expected {IMAGE_DIR}/ (the CelebAMask-HQ layout)")
        self.mapping_file = _find(self.root, MAPPING_FILE, ("Anno",))
        self.identity_file = _find(self.root, IDENTITY_FILE, ("Anno",))
        self.attr_file = _find(self.root, HQ_ATTR_FILE, ()) or _find(self.root, ATTR_FILE, ("Anno",))
        mask_dir = self.root / MASK_DIR
        self.mask_dir = mask_dir if mask_dir.is_dir() else None

    def _join_tables(self) -> tuple[dict[int, str], dict[str, str]]:
        """(HQ index -> original CelebA file, original file -> identity), empty where missing."""
        missing = [n for n, f in ((MAPPING_FILE, self.mapping_file), (IDENTITY_FILE, self.identity_file))
                   if f is None]
        if missing:
            log.warning("%s: %s not found: every image is its own identity (hq<index>)",
                        self.root, " and ".join(missing))
        mapping = parse_mapping(self.mapping_file) if self.mapping_file else {}
        ids = dict(parse_identities(self.identity_file)) if self.identity_file else {}
        return mapping, {f: f"{int(i):0{ID_WIDTH}d}" for f, i in ids.items()}

    def list(self) -> Iterator[Entry]:
        mapping, identities = self._join_tables()
        attributes = parse_attributes(self.attr_file) if self.attr_file else {}
        by_hq_name = self.attr_file is not None and self.attr_file.name == HQ_ATTR_FILE
        with os.scandir(self.image_dir) as it:
            names = sorted(d.name for d in it if is_image_name(d.name) and d.is_file())
        entries, unmatched = [], 0
        for file_name in names:
            index = hq_index(file_name)
            if index is None:
                log.warning("skipping %s/%s: not a CelebA-HQ index", IMAGE_DIR, file_name)
                continue
            meta: dict[str, Any] = {"celebahq_index": index}
            orig = mapping.get(index)
            if orig is not None:
                meta["celeba_file"] = orig
            if orig in identities:
                identity = identities[orig]
                key = sanitize_key(identity, f"hq{index:05d}")
            else:
                unmatched += bool(identities)
                identity = key = f"hq{index:05d}"
            attrs = attributes.get(file_name if by_hq_name else orig or "")
            if attrs is not None:
                meta["celeba_attributes"] = attrs
            entries.append(Entry(key=key, identity=identity, location=f"{IMAGE_DIR}/{file_name}",
                                 meta=meta))
        if unmatched:
            log.warning("%s: %d images have no CelebA identity: each is its own (hq<index>)",
                        self.root, unmatched)
        yield from resolve_collisions(entries)

    def part_masks(self, index: int) -> dict[str, Path]:
        """Part name -> mask file of one HQ index (empty without masks)."""
        if self.mask_dir is None:
            return {}
        for folder in (self.mask_dir / str(index // MASKS_PER_FOLDER), self.mask_dir):
            found = {p: path for p in gt.PAINT_ORDER
                     if (path := folder / f"{index:05d}_{p}.png").is_file()}
            if found:
                return found
        return {}

    def ground_truth(self, location: str) -> np.ndarray | None:
        """The merged label map in the image's frame, None when the sample has no masks."""
        index = hq_index(location)
        paths = self.part_masks(index) if index is not None else {}
        if not paths:
            return None
        parts = {}
        for name, path in paths.items():
            mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise ValueError(f"unreadable mask {path.name}")
            parts[name] = mask
        with Image.open(safe_join(self.root, location)) as im:
            size = im.size
        return merge_parts(parts, size)

    def extra_files(self, location: str, meta: dict[str, Any]) -> dict[str, bytes]:
        labels = self.ground_truth(location)
        return {} if labels is None else {gt.GT_PARSING: encode_labels(labels)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "identities": self.identity_file is not None
                and self.mapping_file is not None, "attributes": self.attr_file is not None,
                "ground_truth": self.mask_dir is not None}
