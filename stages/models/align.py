"""Five-point similarity alignment: templates, transform estimation and warping.

Point order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner,
as seen in the image (RetinaFace's order). Two templates:

* ``FFHQ_512``: the FFHQ-style 512x512 face crop used by face-restoration helpers (CodeFormer,
  GFPGAN): eyes at y~240, mouth at y~371, so hair and chin fit in the crop. ``ffhq_template``
  scales it to other crop sizes.
* ``ARCFACE_112``: the 112x112 template ArcFace-family recognisers are trained on.
"""
from __future__ import annotations

import cv2
import numpy as np

FFHQ_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)

BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT,
           "replicate": cv2.BORDER_REPLICATE}


def ffhq_template(size: int = 512) -> np.ndarray:
    """The FFHQ-style template for a ``size`` x ``size`` crop."""
    return FFHQ_512 * (size / 512.0)


def as_points(points) -> np.ndarray:
    """(N, 2) float64 from a flat [x0, y0, x1, y1, ...] sequence or an (N, 2) array."""
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst, 2x3."""
    src, dst = as_points(src), as_points(dst)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    u, sing, vt = np.linalg.svd(d0.T @ s0 / len(src))
    # a reflection is never a valid face alignment: flip the weakest axis instead
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ np.diag(d) @ vt
    var_s = (s0 ** 2).sum() / len(src)
    scale = float((sing * d).sum() / var_s) if var_s > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def estimate(points, template: np.ndarray, method: str = "umeyama") -> np.ndarray:
    """The 2x3 similarity mapping ``points`` (source px) onto ``template`` (crop px).

    ``umeyama`` is plain least squares over all five points (deterministic); ``lmeds`` is
    OpenCV's robust estimator, which tolerates one bad point but can pick a poor subset.
    """
    src = as_points(points)
    if method == "umeyama":
        return umeyama(src, template)
    if method == "lmeds":
        matrix, _ = cv2.estimateAffinePartial2D(src, as_points(template), method=cv2.LMEDS)
        if matrix is None:
            return umeyama(src, template)
        return matrix.astype(np.float64)
    raise ValueError(f"unknown alignment method {method!r}")


def scale_of(matrix: np.ndarray) -> float:
    """The uniform scale of a similarity transform (crop px per source px)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2]))))


def transform_points(points, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 transform to (N, 2) points."""
    pts = as_points(points)
    matrix = np.asarray(matrix, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, size: int, border: str = "reflect") -> np.ndarray:
    """Warp ``image`` into a ``size`` x ``size`` crop with the 2x3 ``matrix`` (source -> crop).

    Strong downscaling first shrinks the source with area averaging, since warpAffine samples
    without prefiltering and would alias.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = scale_of(matrix)
    if scale < 0.8:
        h, w = image.shape[:2]
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        sx, sy = new_w / w, new_h / h
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        # resize maps pixel centres p -> (p + 0.5) * s - 0.5; fold its inverse into the matrix
        inv = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])
        matrix = matrix @ inv
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_CUBIC,
                          borderMode=BORDERS[border], borderValue=(0, 0, 0))


def align(image: np.ndarray, points, template: np.ndarray, size: int,
          border: str = "reflect") -> tuple[np.ndarray, np.ndarray]:
    """Crop and the 2x3 source->crop matrix for ``points`` aligned to ``template``."""
    matrix = estimate(points, template)
    return warp(image, matrix, size, border), matrix
