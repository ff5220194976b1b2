"""Manifest columns and label map of the ``parsing`` stage (CelebAMask-HQ face parsing).

``parsing.png`` is a uint8 label map the size of the stage's frame; its values index
``CLASSES`` (the 19 CelebAMask-HQ classes in the order of facexlib's BiSeNet, i.e.
zllrunning/face-parsing.PyTorch). ParseNet was trained with the dataset's own order
(``PARSENET_CLASSES``); the stage remaps its output to ``CLASSES`` so both models write the same
labels. ``l_``/``r_`` follow the dataset's annotation. ``eye_g`` is eyeglasses, ``ear_r``
earrings, ``neck_l`` necklace.

``facemask.png`` is uint8 0/255: 255 where the label is one of ``FACE_MASK_CLASSES`` (skin,
brows, eyes, nose, mouth, lips). Hair, ears, glasses, neck, clothes and hats are outside it, so
the mask is the face area an identity model or an inpainting loss should look at.
"""
from __future__ import annotations

import pyarrow as pa

MODEL_CLASSES = "celebamask19"
PARSING_IMAGE = "parsing.png"
FACE_MASK_IMAGE = "facemask.png"

CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
PARSENET_CLASSES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear",
    "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
FACE_MASK_CLASSES: tuple[str, ...] = (
    "skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip",
)
FACE_MASK_IDS: tuple[int, ...] = tuple(CLASSES.index(c) for c in FACE_MASK_CLASSES)

SCHEMA = pa.schema(
    [
        pa.field("class_fraction", pa.list_(pa.float32())),  # 19 shares of pixels, CLASSES order
        pa.field("face_mask_fraction", pa.float32()),  # share of pixels in facemask.png
        pa.field("model_classes", pa.string()),  # label set of parsing.png: celebamask19
        pa.field("gt_miou", pa.float32()),  # mean IoU vs the source's gtparsing.png; null without
        pa.field("gt_iou", pa.list_(pa.float32())),  # IoU per class (CLASSES order), NaN if absent; null without ground truth
    ]
)
