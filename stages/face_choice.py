"""Which detection is the photo's main face: detector score, size, centrality and five-point shape.

A wild photo holds background faces and detector false positives (a chest, a patterned shirt)
that can outscore ``conf_threshold`` and outsize the real face. Each candidate gets four
terms in [0, 1]:

- ``score``: the detector's log-odds over ``SCORE_LOGIT_CAP`` (0.9 -> 0.44, 0.97 -> 0.70,
  0.993 and above -> 1): near-certain faces tie on it, so centrality and size decide
  among them, while a false positive at 0.97 loses ground.
- ``size``: sqrt(box area / largest candidate's area).
- ``centre``: 1 - distance of the box centre to the image centre / half the image diagonal.
- ``shape``: how face-like the five points are in the frame of the eye line (eye distance vs
  box width, eyes above nose above mouth, mouth width vs eye distance, points inside the box);
  a product of soft bands, 0 when a landmark regression clearly failed.

The choice value is ``shape * (W_SCORE * score + W_SIZE * size + W_CENTRE * centre)``. Pure
numpy, no model: ``stages/detect.py`` calls :func:`choose`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORE_LOGIT_CAP = 5.0
"""Log-odds at which the score term saturates (p = 0.9933)."""
W_SCORE, W_SIZE, W_CENTRE = 0.4, 0.4, 0.2
TERMS = ("score", "size", "centre", "shape")


@dataclass(frozen=True)
class Choice:
    """The chosen detection and why."""

    index: int
    """Row of the chosen face in the candidates array."""
    value: float
    """Its choice value (0..1)."""
    why: str
    """Its terms, and the term the runner-up lost on (or the rule that chose it)."""
    runner_up: int | None
    """Row of the second-best candidate, None with a single candidate."""
    runner_up_value: float | None
    """The runner-up's choice value under the same rule."""


def _band(x: float, lo: float, hi: float, soft: float) -> float:
    """1 inside [lo, hi], falling linearly to 0 at ``soft`` outside either end."""
    if x < lo:
        return max(0.0, 1.0 - (lo - x) / soft)
    if x > hi:
        return max(0.0, 1.0 - (x - hi) / soft)
    return 1.0


def shape_term(box: np.ndarray, points: np.ndarray) -> float:
    """How face-like five RetinaFace points are (left eye, right eye, nose, mouth corners)."""
    pts = np.asarray(points, np.float64).reshape(5, 2)
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
    eye = pts[1] - pts[0]
    d_eye = float(np.hypot(*eye))
    if d_eye < 1e-6 or not np.isfinite(pts).all():
        return 0.0
    u = eye / d_eye  # along the eye line, towards image right on an upright face
    v = np.array([-u[1], u[0]])  # perpendicular, towards the chin on an upright face
    eye_mid, mouth_mid = (pts[0] + pts[1]) / 2, (pts[3] + pts[4]) / 2
    down = float((mouth_mid - eye_mid) @ v)  # eyes-to-mouth distance, > 0 when eyes are above
    nose_t = float((pts[2] - eye_mid) @ v) / down if down > 1e-6 else -1.0
    mouth_w = float(np.hypot(*(pts[4] - pts[3])))
    margin = 0.15 * max(bw, bh)
    inside = np.mean((pts[:, 0] > x1 - margin) & (pts[:, 0] < x2 + margin)
                     & (pts[:, 1] > y1 - margin) & (pts[:, 1] < y2 + margin))
    # bands from RetinaFace on real photos: frontal eye distance 0.4-0.5 box widths, profiles
    # down to ~0.15; eyes-to-mouth 0.3-0.5 box heights; the nose about halfway down
    terms = (
        _band(d_eye / bw, 0.18, 0.75, 0.12),
        _band(down / bh, 0.18, 0.7, 0.12),
        _band(nose_t, 0.15, 0.95, 0.3),
        _band(mouth_w / d_eye, 0.35, 1.6, 0.5),
        _band(abs(float(np.degrees(np.arctan2(eye[1], eye[0])))), 0.0, 60.0, 30.0),
        float(inside),
    )
    return float(np.prod(terms))


def terms(faces: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) score, size, centre and shape terms of (N, 15) RetinaFace rows."""
    boxes, scores = faces[:, :4].astype(np.float64), faces[:, 4].astype(np.float64)
    p = np.clip(scores, 1e-6, 1 - 1e-9)
    score = np.clip(np.log(p / (1 - p)) / SCORE_LOGIT_CAP, 0.0, 1.0)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    size = np.sqrt(area / max(float(area.max()), 1e-9))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = np.hypot(centres[:, 0] - width / 2, centres[:, 1] - height / 2)
    centre = np.clip(1.0 - dist / (0.5 * np.hypot(width, height)), 0.0, 1.0)
    shape = np.array([shape_term(f[:4], f[5:15]) for f in faces])
    return np.stack([score, size, centre, shape], 1)


def values(t: np.ndarray) -> np.ndarray:
    """Choice values of a terms array."""
    return t[:, 3] * (W_SCORE * t[:, 0] + W_SIZE * t[:, 1] + W_CENTRE * t[:, 2])


def _describe(t: np.ndarray) -> str:
    return " ".join(f"{n}={v:.2f}" for n, v in zip(TERMS, t))


def choose(faces: np.ndarray, width: int, height: int, rule: str = "auto") -> Choice:
    """The main face among (N >= 1, 15) detections of a ``width`` x ``height`` image.

    ``rule``: auto (the weighted value above), largest (box area) or central (box centre
    nearest the image centre); the terms are reported whatever the rule.
    """
    if len(faces) == 0:
        raise ValueError("choose() needs at least one detection")
    t = terms(faces, width, height)
    if rule == "auto":
        value = values(t)
    elif rule == "largest":
        value = t[:, 1]
    elif rule == "central":
        value = t[:, 2]
    else:
        raise ValueError(f"unknown rule {rule!r}: auto, largest or central")
    order = np.argsort(-value, kind="stable")
    best = int(order[0])
    if len(faces) == 1:
        return Choice(best, float(value[best]), f"only face: {_describe(t[best])}", None, None)
    second = int(order[1])
    if rule == "auto":
        weights = np.array([W_SCORE, W_SIZE, W_CENTRE])
        # the term whose weighted difference favours the chosen face most; shape multiplies
        gains = weights * (t[best, :3] - t[second, :3]) * t[best, 3]
        lost = "shape" if t[second, 3] < 0.5 * t[best, 3] else TERMS[int(np.argmax(gains))]
        why = f"{_describe(t[best])}; runner-up lost on {lost} ({_describe(t[second])})"
    else:
        why = f"{rule}: {_describe(t[best])}; runner-up {_describe(t[second])}"
    return Choice(best, float(value[best]), why, second, float(value[second]))


# --- the landmarks stage: which mediapipe mesh on the aligned crop is detect's face ----------

MESH_FIVE = ((33, 133), (362, 263), (1,), (61,), (291,))
"""mediapipe mesh indices whose mean gives each RetinaFace point (eye corners, nose tip, mouth
corners), in RetinaFace's image-left-first order on an upright frontal face."""
SIMILAR_SIZE = 0.7
"""A second mesh at least this fraction of the kept one's size, near the expected centre as
well, makes the crop ambiguous."""
CENTRE_RADIUS = 0.2
"""Near the expected centre: within this fraction of the crop's longer side."""


@dataclass(frozen=True)
class MeshChoice:
    """Which of several meshes to keep, or why none can be."""

    index: int
    """The kept mesh."""
    ambiguous: bool
    """A second face of similar size also sits where the face is expected."""
    distance: float
    """Kept mesh's mean five-point distance to detect's points (px), or its centre's distance
    to the crop centre without them."""


def mesh_five(points: np.ndarray) -> np.ndarray:
    """(5, 2) RetinaFace-like points of a (>=468, 2+) mediapipe mesh."""
    return np.stack([points[list(idx), :2].mean(0) for idx in MESH_FIVE])


def choose_mesh(meshes: list[np.ndarray], width: int, height: int,
                points5: np.ndarray | None = None) -> MeshChoice:
    """The mesh matching detect's five crop points (or the centred one without them)."""
    if not meshes:
        raise ValueError("choose_mesh() needs at least one mesh")
    five = [mesh_five(m) for m in meshes]
    sizes = np.array([float(np.ptp(m[:, :2], axis=0).max()) for m in meshes])
    centres = np.array([f.mean(0) for f in five])
    if points5 is not None:
        ref = np.asarray(points5, np.float64).reshape(5, 2)
        dist = np.array([float(np.linalg.norm(f - ref, axis=1).mean()) for f in five])
        expected = ref.mean(0)
    else:
        expected = np.array([width / 2, height / 2])
        dist = np.linalg.norm(centres - expected, axis=1) - 0.25 * sizes  # prefer large central faces
    best = int(np.argmin(dist))
    off = np.linalg.norm(centres - expected, axis=1)
    radius = CENTRE_RADIUS * max(width, height)
    # with detect's points the face's place is known; without, a similar face about as
    # central as the kept one is just as likely the subject
    near = off < radius if points5 is not None else off < off[best] + radius
    rivals = [i for i in range(len(meshes)) if i != best and near[i] and sizes[i] >= SIMILAR_SIZE * sizes[best]]
    return MeshChoice(best, bool(rivals), float(dist[best]))
