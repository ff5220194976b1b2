"""Ground truth carried by a source: the CelebAMask-HQ face-parsing label map.

``gtparsing.png`` is a uint8 label map in the SOURCE frame (the size of the source image, not of
the aligned crop), values indexing ``schemas.parsing.CLASSES`` (BiSeNet order), 0 = background.
The ``celeba-hq`` source builds it from CelebAMask-HQ's per-part masks (``<i:05d>_<part>.png``,
512x512, white = part) and scales it to the 1024x1024 image with nearest neighbour.

Parts are painted in ``PAINT_ORDER``, each over the ones before it: skin first, then the small
face parts, then neck, accessories, clothes, hair and hat. This is the order in which the label
maps BiSeNet (face-parsing.PyTorch) was trained on were built, so a score against this map
compares like with like (e.g. glasses cover eyes, hair covers a brow it hides).
"""
from __future__ import annotations

GT_PARSING = "gtparsing.png"
GT_CLASSES = "celebamask19"
"""Label set of ``gtparsing.png``: the same as the parsing stage's (``schemas.parsing``)."""

# CelebAMask-HQ part-file name -> class id in schemas.parsing.CLASSES (part names are class names)
PART_CLASS: dict[str, int] = {
    "skin": 1, "l_brow": 2, "r_brow": 3, "l_eye": 4, "r_eye": 5, "eye_g": 6, "l_ear": 7,
    "r_ear": 8, "ear_r": 9, "nose": 10, "mouth": 11, "u_lip": 12, "l_lip": 13, "neck": 14,
    "neck_l": 15, "cloth": 16, "hair": 17, "hat": 18,
}
PAINT_ORDER: tuple[str, ...] = tuple(sorted(PART_CLASS, key=PART_CLASS.__getitem__))
"""Parts in painting order (later ones win where masks overlap): ascending class id."""
MASK_THRESHOLD = 128
"""A mask pixel belongs to the part when its grey value is at least this."""
