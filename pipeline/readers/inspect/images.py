"""Thumbnails for the report: frames, label maps coloured with a legend, landmarks, pose, depth."""
from __future__ import annotations

import hashlib
import io

import cv2
import numpy as np

from schemas import parsing, pseudo_mask

THUMB = 160
JPEG_QUALITY = 82

# One colour per part name, shared by the pseudo mask and the parsing classes.
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "face": (236, 178, 140), "skin": (236, 178, 140),
    "nose": (255, 96, 80),
    "left_brow": (130, 70, 20), "l_brow": (130, 70, 20),
    "right_brow": (190, 120, 40), "r_brow": (190, 120, 40),
    "left_eye": (40, 110, 255), "l_eye": (40, 110, 255),
    "right_eye": (0, 210, 255), "r_eye": (0, 210, 255),
    "upper_lip": (225, 25, 70), "u_lip": (225, 25, 70),
    "lower_lip": (255, 110, 170), "l_lip": (255, 110, 170),
    "mouth": (110, 0, 70),
    "eye_g": (210, 210, 210), "l_ear": (255, 150, 0), "r_ear": (255, 215, 0),
    "ear_r": (255, 0, 220), "neck": (140, 210, 110), "neck_l": (250, 250, 60),
    "cloth": (80, 90, 210), "hair": (150, 85, 210), "hat": (0, 170, 130),
}


def _colour(name: str) -> tuple[int, int, int]:
    if name in PART_COLOURS:
        return PART_COLOURS[name]
    digest = hashlib.sha256(name.encode()).digest()
    return digest[0], digest[1], digest[2]


def palette(names: list[str] | tuple[str, ...]) -> np.ndarray:
    """(N, 3) uint8 RGB, row i the colour of class i; class 0 (background) black."""
    colours = np.array([_colour(n) for n in names], np.uint8)
    colours[0] = 0
    return colours


MASK_NAMES = [pseudo_mask.NAMES.get(i, f"class_{i}") for i in range(max(pseudo_mask.NAMES) + 1)]
PARSING_NAMES = list(parsing.CLASSES)
MASK_PALETTE = palette(MASK_NAMES)
PARSING_PALETTE = palette(PARSING_NAMES)


def legend(names: list[str]) -> list[tuple[str, str]]:
    """(class name, CSS colour) of every class but the background."""
    return [(n, "#%02x%02x%02x" % _colour(n)) for n in names[1:]]


def decode(data: bytes, unchanged: bool = False) -> np.ndarray | None:
    """RGB uint8 image (or the raw array with ``unchanged``: label maps, 16-bit depth)."""
    flag = cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        return None
    if not unchanged:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def fit(img: np.ndarray, size: int = THUMB, nearest: bool = False) -> np.ndarray:
    """Resize so the longer side is ``size`` (label maps with nearest neighbour)."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    dims = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, dims, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def labels_over(frame: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Thumbnail of ``frame`` with the label map's classes painted over it (background left bare)."""
    base = fit(frame)
    if labels.ndim == 3:
        labels = labels[..., 0]
    lab = cv2.resize(labels, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_NEAREST)
    lab = np.clip(lab, 0, len(colours) - 1)
    painted = colours[lab].astype(np.float32)
    photo = base.astype(np.float32)
    out = photo * 0.55  # dim the background so the classes read clearly
    where = lab > 0
    out[where] = photo[where] * (1 - alpha) + painted[where] * alpha
    return out.clip(0, 255).astype(np.uint8)


def landmarks_over(frame: np.ndarray, lmk: np.ndarray) -> np.ndarray:
    """Thumbnail of ``frame`` with the mesh points (x, y in frame pixels) as dots."""
    base = fit(frame)
    scale = base.shape[1] / frame.shape[1]
    out = (base.astype(np.float32) * 0.7).astype(np.uint8)
    for i, (x, y) in enumerate(lmk[:, :2] * scale):
        if np.isfinite(x) and np.isfinite(y):
            colour = (255, 60, 60) if i >= 468 else (80, 255, 120)  # refined iris points in red
            cv2.circle(out, (int(round(x)), int(round(y))), 1, colour, -1, cv2.LINE_AA)
    return out


def axes_over(frame: np.ndarray, pose_rgb: np.ndarray) -> np.ndarray:
    """Thumbnail of ``frame`` with the pose image's axes drawn over it."""
    base = fit(frame).astype(np.float32) * 0.6
    # thicken the lines first so they survive the downscale
    thick = cv2.dilate(pose_rgb, np.ones((5, 5), np.uint8))
    axes = cv2.resize(thick, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_AREA).astype(np.float32)
    strength = axes.max(axis=2, keepdims=True) / 255.0
    return (base * (1 - strength) + axes * strength).clip(0, 255).astype(np.uint8)


def depth_colour(depth: np.ndarray) -> np.ndarray:
    """Thumbnail of a depth map (0 = background), near = bright."""
    d = depth.astype(np.float32)
    if d.ndim == 3:
        d = d[..., 0]
    fg = d > 0
    out = np.zeros(d.shape, np.uint8)
    if fg.any():
        lo, hi = float(d[fg].min()), float(d[fg].max())
        out[fg] = (40 + 215 * (d[fg] - lo) / max(hi - lo, 1e-6)).astype(np.uint8)
    coloured = cv2.cvtColor(cv2.applyColorMap(out, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    coloured[~fg] = 0
    return fit(coloured)


def load_npy(data: bytes) -> np.ndarray | None:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError):
        return None
