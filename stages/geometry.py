"""Pure numpy/cv2 face-mesh geometry: z-buffer depth, pseudo-mask drawing, PnP head pose, and
the angle arithmetic the pose-reporting stages share.

Image points are continuous pixel coordinates where pixel (i, j) covers [i, i+1) x [j, j+1)
(mediapipe's normalised coordinates times the image size), so pixel centres sit at i + 0.5.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stages.types import finite

FACE_MODEL = Path(__file__).resolve().parent / "data" / "face_model.npz"
ANGLES = ("yaw", "pitch", "roll")


def wrap_degrees(deg: float) -> float:
    """An angle (or a difference of two) folded into [-180, 180)."""
    return (deg + 180.0) % 360.0 - 180.0


def angles_in(columns: dict | None) -> np.ndarray | None:
    """(yaw, pitch, roll) from a row's columns when all three are finite numbers, else None."""
    return finite([columns.get(k) for k in ANGLES], 3) if columns else None


def mean_angle_difference(a, b) -> float:  # noqa: ANN001 - two (yaw, pitch, roll) sequences
    """Mean absolute difference of two (yaw, pitch, roll), each wrapped to [-180, 180)."""
    return float(np.mean([abs(wrap_degrees(float(x) - float(y))) for x, y in zip(a, b)]))
_SHIFT = 4  # cv2 fixed-point fraction bits for sub-pixel polygon vertices

FOCAL_WIDTHS = 20.0
"""PnP focal length in image widths: a near-orthographic camera (3 degrees field of view).
The aligned crop's true camera is unknown; with focal = 1 width (a 53 degree lens 25 cm from
the face) the FFHQ template's face, centred 50 px below the crop centre, read as ~5 degrees
of upward pitch. The learned estimators (300W-LP labels, 3DDFA) are weak-perspective too."""
REFERENCE_PITCH_DEG = -6.3
"""Tilt (about the model's x axis) that turns the canonical face to the learned estimators'
frontal. ``face_model.npz``'s zero pitch is the average pose of the photos it was built from,
which look ~6 degrees down; measured as the median of (mean of the 66-bin pose net and
3DDFA-V2 pitch) minus PnP pitch on the 124 shared real photos (docs/benchmarks.md, wild)."""


@dataclass(frozen=True)
class FaceModel:
    """Canonical 468-vertex face (see ``stages/data/build_face_model.py``)."""

    vertices: np.ndarray
    """(468, 3) float32; x to the subject's left, y down, z away from the camera, ~cm."""
    triangles: np.ndarray
    """(K, 3) int32: the tessellation plus strips that close the eye and mouth openings."""
    mirror: np.ndarray
    """(468,) int32: each vertex's left/right twin."""


@functools.cache
def load_face_model(path: Path = FACE_MODEL) -> FaceModel:
    with np.load(path) as d:
        tris = np.concatenate([d["triangles"], d["hole_triangles"]]).astype(np.int32)
        a = np.radians(REFERENCE_PITCH_DEG)
        tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        vertices = (d["vertices"].astype(np.float64) @ tilt.T).astype(np.float32)
        return FaceModel(vertices, tris, d["mirror"].astype(np.int32))


def render_depth(
    points: np.ndarray, triangles: np.ndarray, shape: tuple[int, int], chunk: int = 1 << 14
) -> np.ndarray:
    """Z-buffer: per pixel the smallest z of the triangles covering its centre, +inf elsewhere.

    ``points`` (N, 3) hold x, y in pixels and z (smaller = nearer); z is interpolated with
    screen-space barycentric weights, which is exact for an orthographic mesh like mediapipe's.
    Vectorised over (triangle, pixel-in-its-box) pairs, at most ``chunk`` pairs at a time.
    """
    h, w = shape
    zbuf = np.full(h * w, np.inf, np.float32)
    tri = points[triangles].astype(np.float64)  # (K, 3 vertices, xyz)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    lo = np.maximum(np.floor(tri[:, :, :2].min(1) - 0.5), 0).astype(np.int64)
    hi = np.minimum(np.ceil(tri[:, :, :2].max(1) - 0.5), [w - 1, h - 1]).astype(np.int64)
    nx, ny = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    keep = (nx > 0) & (ny > 0) & (np.abs(area) > 1e-9)
    idx = np.nonzero(keep)[0]
    counts = (nx * ny)[idx]
    # Per-triangle values as contiguous columns, spread over a triangle's pairs by np.repeat:
    # the same numbers as indexing with the pair's triangle, at a fraction of the cost.
    ax, ay, az, bx, by, bz, cx, cy, cz = (np.ascontiguousarray(v[idx]) for v in (*a.T, *b.T, *c.T))
    area, lx, ly, nx = area[idx], lo[idx, 0], lo[idx, 1], nx[idx]
    bounds = np.searchsorted(np.cumsum(counts), np.arange(chunk, counts.sum(), chunk))
    for part in np.split(np.arange(len(idx)), bounds):
        if len(part) == 0:
            continue
        n = counts[part]
        rep = lambda v: np.repeat(v[part], n)  # noqa: E731
        off = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        row, col = np.divmod(off, rep(nx))
        ix, iy = rep(lx) + col, rep(ly) + row
        px, py = ix + 0.5, iy + 0.5
        akx, aky, bkx, bky, ckx, cky = rep(ax), rep(ay), rep(bx), rep(by), rep(cx), rep(cy)
        ar = rep(area)
        wa = ((bkx - px) * (cky - py) - (bky - py) * (ckx - px)) / ar
        wb = ((ckx - px) * (aky - py) - (cky - py) * (akx - px)) / ar
        wc = 1.0 - wa - wb
        inside = (wa >= 0) & (wb >= 0) & (wc >= 0)
        z = wa * rep(az) + wb * rep(bz) + wc * rep(cz)
        np.minimum.at(zbuf, (iy * w + ix)[inside], z[inside].astype(np.float32))
    return zbuf.reshape(h, w)


def depth_to_uint16(zbuf: np.ndarray) -> np.ndarray:
    """Normalise a z-buffer over the face: nearest 65535, farthest 1, background 0."""
    face = np.isfinite(zbuf)
    out = np.zeros(zbuf.shape, np.uint16)
    if not face.any():
        return out
    z = zbuf[face].astype(np.float64)
    near, far = z.min(), z.max()
    t = (far - z) / (far - near) if far > near else np.ones_like(z)
    out[face] = (1 + np.rint(t * 65534)).astype(np.uint16)
    return out


def draw_mask(
    points: np.ndarray, classes: list[tuple[int, str, list[int]]], shape: tuple[int, int]
) -> np.ndarray:
    """uint8 label map: fill each class polygon in order, later classes overwriting earlier."""
    mask = np.zeros(shape, np.uint8)
    xy = np.asarray(points, np.float64)[:, :2] - 0.5  # cv2 puts integer coordinates at centres
    for class_id, _, loop in classes:
        poly = np.rint(xy[loop] * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(mask, [poly], int(class_id), lineType=cv2.LINE_8, shift=_SHIFT)
    return mask


def camera_matrix(width: int, height: int) -> np.ndarray:
    """Pinhole intrinsics: focal = ``FOCAL_WIDTHS`` image widths, principal point at the centre."""
    f = FOCAL_WIDTHS * width
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float64)


def rotation_to_angles(rot: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a model-to-camera rotation (OpenCV camera axes).

    yaw > 0: the face points towards image left; pitch > 0: it points up; roll > 0: it is
    turned clockwise on screen. Decomposed as R = Ry(yaw) Rx(-pitch) Rz(roll).
    """
    fwd = -rot[:, 2]  # where the face looks: the model's -z axis
    yaw = np.arctan2(-fwd[0], -fwd[2])
    pitch = np.arctan2(-fwd[1], np.hypot(fwd[0], fwd[2]))
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(-pitch), np.sin(-pitch)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = (ry @ rx).T @ rot
    roll = np.arctan2(rz[1, 0], rz[0, 0])
    return float(np.degrees(yaw)), float(np.degrees(pitch)), float(np.degrees(roll))


def head_pose(
    image_xy: np.ndarray, model: np.ndarray, width: int, height: int
) -> tuple[float, float, float, float]:
    """(yaw, pitch, roll, rms reprojection error px) by PnP of the model onto the landmarks."""
    obj = np.ascontiguousarray(model, np.float64)
    img = np.ascontiguousarray(image_xy[: len(model), :2], np.float64)
    cam = camera_matrix(width, height)
    ok, rvec, tvec = cv2.solvePnP(obj, img, cam, None, flags=cv2.SOLVEPNP_EPNP)
    if not ok:
        raise cv2.error("solvePnP failed")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, cam, None, rvec, tvec)
    proj = cv2.projectPoints(obj, rvec, tvec, cam, None)[0][:, 0]
    rmse = float(np.sqrt(np.mean(np.sum((proj - img) ** 2, axis=1))))
    rot = cv2.Rodrigues(rvec)[0]
    return (*rotation_to_angles(rot), rmse)
