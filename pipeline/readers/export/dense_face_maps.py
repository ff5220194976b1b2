"""The per-pixel maps of the ``dense-face`` export, in the official Dense-Face data's conventions.

* ``masks/``: the loader's 10-colour part palette, channel i = colour i (BGR as cv2 reads it).
  Where the channels are on the official sample (located with its landmarks): 0 background
  (every pixel has a palette colour, no black), 1 mouth interior, 2 brow on the landmark-105
  side, 3 face skin, 4 eye on the iris-468 side, 5 nose, 6 upper lip, 7 brow on the 334 side,
  8 lower lip, 9 eye on the iris-473 side. mediapipe's 105 / 468 are on the subject's right
  (our ``right_brow`` / ``right_eye``), 334 / 473 on the left, so every pseudo-mask class has
  a channel (``CHANNEL_OF``) and every channel one class.
* ``xyzmaps/``: (256, 256, 3) float32; on face pixels the row and the column coordinate in the
  face's own frame (0 at its top / left edge, 64 at its bottom / right edge: the scale the official
  sample shows) and the mesh depth (0 nearest, 1 farthest); background (-1, -1, 1).
* ``msmasks/``: the face parsing as a colour map (``PARSING_COLOURS``, ours: the official colours
  are not published) when the parsing stage ran, else the binary face region (0/255).
"""
from __future__ import annotations

import numpy as np

from schemas import parsing as sp
from schemas import pseudo_mask as pm

# The loader's ten part colours (B, G, R, as cv2 reads them), in channel order.
PALETTE = ((227, 206, 166), (0, 127, 255), (111, 191, 253), (180, 120, 31), (153, 154, 251),
           (138, 223, 178), (214, 178, 202), (28, 26, 227), (154, 61, 106), (44, 160, 51))
CHANNEL_NAMES = ("background", "mouth", "right_brow", "face", "right_eye", "nose", "upper_lip",
                 "left_brow", "lower_lip", "left_eye")
# our pseudo-mask class id -> the loader's channel
CHANNEL_OF: dict[int, int] = {pm.IDS[name]: ch for ch, name in enumerate(CHANNEL_NAMES)}
XYZ_SCALE = 64.0
XYZ_BACKGROUND = (-1.0, -1.0, 1.0)
# One colour (R, G, B) per CelebAMask-HQ class of the parsing stage (schemas.parsing.CLASSES).
PARSING_COLOURS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0), "skin": (204, 0, 0), "l_brow": (76, 153, 0), "r_brow": (204, 204, 0),
    "l_eye": (51, 51, 255), "r_eye": (204, 0, 204), "eye_g": (0, 255, 255), "l_ear": (255, 204, 204),
    "r_ear": (102, 51, 0), "ear_r": (255, 0, 0), "nose": (102, 204, 0), "mouth": (255, 255, 0),
    "u_lip": (0, 0, 153), "l_lip": (0, 0, 204), "neck": (255, 51, 153), "neck_l": (0, 204, 204),
    "cloth": (0, 51, 0), "hair": (255, 153, 51), "hat": (0, 204, 0),
}


def palette_mask(labels: np.ndarray) -> np.ndarray:
    """Pseudo-mask label map -> RGB image whose BGR reading is the loader's palette (no black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = PALETTE[0][::-1]
    for cid, ch in CHANNEL_OF.items():
        lut[cid] = PALETTE[ch][::-1]  # BGR -> RGB for PIL
    return lut[labels]


def channels(bgr: np.ndarray) -> np.ndarray:
    """(10, H, W) bool: the loader's exact-colour reading of a BGR mask image."""
    return np.all(bgr[None] == np.array(PALETTE, np.uint8)[:, None, None], axis=3)


def square_box(box: list[float], w: int, h: int) -> list[float]:
    """A pixel box as a normalised square (x1, y1, x2, y2): side max(w, h) of the box,
    centred on it, shifted (not shrunk) to stay inside the image when it fits."""
    x1, y1, x2, y2 = box
    side = min(max(x2 - x1, y2 - y1), float(min(w, h)))
    cx = min(max((x1 + x2) / 2, side / 2), w - side / 2)
    cy = min(max((y1 + y2) / 2, side / 2), h - side / 2)
    return [(cx - side / 2) / w, (cy - side / 2) / h, (cx + side / 2) / w, (cy + side / 2) / h]


def xyz_map(depth: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 from the landmarks stage's depth.png (uint16: 0 background, 65535
    nearest): row, column in the face's frame (0..64) and depth (0 nearest .. 1 farthest)."""
    out = np.empty((*depth.shape, 3), np.float32)
    out[:] = XYZ_BACKGROUND
    ys, xs = np.nonzero(depth)
    if len(ys) == 0:
        return out
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    out[ys, xs, 0] = (ys - top) / max(bottom - top, 1) * XYZ_SCALE
    out[ys, xs, 1] = (xs - left) / max(right - left, 1) * XYZ_SCALE
    out[ys, xs, 2] = (65535.0 - depth[ys, xs]) / 65534.0
    return out


def parsing_colours(labels: np.ndarray) -> np.ndarray:
    """Parsing label map (schemas.parsing.CLASSES ids) -> RGB colour map."""
    lut = np.zeros((256, 3), np.uint8)
    for i, name in enumerate(sp.CLASSES):
        lut[i] = PARSING_COLOURS[name]
    return lut[labels]
