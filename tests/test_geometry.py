"""Unit tests of stages/geometry.py on synthetic meshes (no mediapipe, no photos)."""
from __future__ import annotations

import collections
import itertools

import cv2
import numpy as np
import pytest

from schemas.pseudo_mask import CLASSES, FACE_OVAL
from stages import geometry as g


def tri_pts(*xyz: tuple[float, float, float]) -> np.ndarray:
    return np.asarray(xyz, np.float32)


def test_zbuffer_keeps_nearer_triangle_in_either_order():
    near = [(2, 2, 1.0), (18, 2, 1.0), (2, 18, 1.0)]
    far = [(0, 0, 5.0), (20, 0, 5.0), (0, 20, 5.0)]
    for first, second in ((near, far), (far, near)):
        pts = tri_pts(*first, *second)
        z = g.render_depth(pts, np.array([[0, 1, 2], [3, 4, 5]]), (20, 20))
        assert z[5, 5] == pytest.approx(1.0)  # covered by both: the nearer wins
        assert z[1, 10] == pytest.approx(5.0)  # only the far one covers it
        assert np.isinf(z[19, 19])  # neither


def test_zbuffer_interpolates_z_barycentrically():
    # z = x + 2y over the triangle; pixel centres sit at i + 0.5
    pts = tri_pts((0, 0, 0), (40, 0, 40), (0, 40, 80))
    z = g.render_depth(pts, np.array([[0, 1, 2]]), (40, 40))
    for y, x in [(3, 5), (10, 20), (25, 7)]:
        assert z[y, x] == pytest.approx((x + 0.5) + 2 * (y + 0.5), abs=1e-3)
    assert np.isinf(z[39, 39])


def test_zbuffer_clips_to_image_and_skips_degenerate():
    pts = tri_pts((-50, -50, 1), (100, -50, 1), (-50, 100, 1), (5, 5, 0), (6, 6, 0), (7, 7, 0))
    z = g.render_depth(pts, np.array([[0, 1, 2], [3, 4, 5]]), (10, 12))
    assert z.shape == (10, 12)
    assert np.all(z[:5, :5] == 1)  # the flat sliver at z=0 drew nothing


def test_depth_to_uint16_range():
    zbuf = np.full((4, 4), np.inf, np.float32)
    zbuf[1:3, 1:3] = [[1.0, 2.0], [3.0, 5.0]]
    d = g.depth_to_uint16(zbuf)
    assert d.dtype == np.uint16
    assert d[0, 0] == 0 and d[1, 1] == 65535 and d[2, 2] == 1
    assert 1 < d[2, 1] < d[1, 2] < 65535
    flat = np.where(np.isfinite(zbuf), 7.0, np.inf).astype(np.float32)
    assert set(np.unique(g.depth_to_uint16(flat))) == {0, 65535}
    assert not g.depth_to_uint16(np.full((3, 3), np.inf, np.float32)).any()


def test_draw_mask_later_classes_overwrite():
    pts = np.array([[2, 2], [30, 2], [30, 30], [2, 30], [10, 10], [20, 10], [20, 20], [10, 20]], np.float32)
    classes = [(1, "big", [0, 1, 2, 3]), (2, "small", [4, 5, 6, 7])]
    m = g.draw_mask(pts, classes, (32, 32))
    assert m.dtype == np.uint8
    assert m[0, 0] == 0 and m[5, 5] == 1 and m[15, 15] == 2
    assert g.draw_mask(pts, classes[::-1], (32, 32))[15, 15] == 1


def rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Ry(yaw) Rx(-pitch) Rz(roll), degrees (the documented decomposition)."""
    y, p, r = np.radians([yaw, -pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 0, 0), (-20, 15, 5), (45, -25, -12), (10, 35, 20)])
def test_rotation_to_angles_roundtrip(angles):
    assert np.allclose(g.rotation_to_angles(rot(*angles)), angles, atol=1e-6)


def test_angle_signs_mean_what_the_schema_says():
    fwd = lambda r: -r[:, 2]  # noqa: E731 - the face's forward direction in camera axes
    assert fwd(rot(20, 0, 0))[0] < 0  # yaw > 0: faces image left
    assert fwd(rot(0, 20, 0))[1] < 0  # pitch > 0: faces up (image y points down)
    x_axis = rot(0, 0, 20)[:, 0]  # the subject's right-to-left axis, image right when frontal
    assert x_axis[1] > 0  # roll > 0: the image-right side goes down (clockwise on screen)


def project(model: np.ndarray, r: np.ndarray, size: int = 400) -> np.ndarray:
    cam = g.camera_matrix(size, size)
    rvec = cv2.Rodrigues(r)[0]
    tvec = np.array([0.0, 0.0, 60.0])
    return cv2.projectPoints(model.astype(np.float64), rvec, tvec, cam, None)[0][:, 0]


@pytest.mark.parametrize("angles", [(25, 10, -8), (-40, -5, 12), (3, 20, 0)])
def test_head_pose_recovers_synthetic_pose_and_mirror_flips(angles):
    model = g.load_face_model()
    pts = project(model.vertices, rot(*angles))
    yaw, pitch, roll, rmse = g.head_pose(pts, model.vertices, 400, 400)
    assert (yaw, pitch, roll) == pytest.approx(angles, abs=0.2)
    assert rmse < 0.05
    mirrored = pts[model.mirror] * [-1, 1] + [400, 0]  # flip the image, keep vertex meaning
    yaw_m, pitch_m, roll_m, _ = g.head_pose(mirrored, model.vertices, 400, 400)
    assert (yaw_m, pitch_m, roll_m) == pytest.approx((-yaw, pitch, -roll), abs=0.2)


def test_face_model_is_symmetric_and_oriented():
    m = g.load_face_model()
    v = m.vertices
    assert v.shape == (468, 3) and m.mirror.shape == (468,)
    assert np.array_equal(m.mirror[m.mirror], np.arange(468))
    assert np.allclose(v[m.mirror] * [-1, 1, 1], v, atol=1e-5)
    assert v[263, 0] > 0 > v[33, 0]  # x towards the subject's left
    assert v[10, 1] < v[1, 1] < v[152, 1]  # y down: forehead, nose tip, chin
    assert v[1, 2] < v[33, 2]  # z away from the camera: the nose tip is nearest


def test_face_model_triangles_close_into_a_disk():
    tris = g.load_face_model().triangles
    uses = collections.Counter(tuple(sorted(e)) for t in tris for e in itertools.combinations(t, 2))
    boundary = {e for e, n in uses.items() if n == 1}
    assert set(uses.values()) == {1, 2}  # a manifold: no edge in three triangles
    oval = {tuple(sorted(e)) for e in zip(FACE_OVAL, FACE_OVAL[1:] + FACE_OVAL[:1])}
    assert boundary == oval  # eyes and mouth are closed, only the face outline is open


def test_mask_classes_on_the_canonical_face():
    v = g.load_face_model().vertices
    xy = (v[:, :2] - v[:, :2].min(0)) * 12 + 10  # frontal view, ~200 px
    mask = g.draw_mask(xy, CLASSES, (230, 230))
    assert set(np.unique(mask)) == {0} | {i for i, _, _ in CLASSES}
    ids = {n: i for i, n, _ in CLASSES}
    left_eye_x = np.nonzero(mask == ids["left_eye"])[1].mean()
    right_eye_x = np.nonzero(mask == ids["right_eye"])[1].mean()
    assert left_eye_x > right_eye_x  # the subject's left eye is on the image's right


def test_angle_helpers_wrap_and_refuse_missing_angles():
    from stages import geometry

    assert geometry.wrap_degrees(190.0) == -170.0 and geometry.wrap_degrees(-180.0) == -180.0
    assert geometry.mean_angle_difference((179.0, 0.0, 10.0), (-179.0, 3.0, 10.0)) == pytest.approx(5 / 3)
    assert geometry.angles_in({"yaw": 1, "pitch": 2.5, "roll": -3}).tolist() == [1.0, 2.5, -3.0]
    assert geometry.angles_in({"yaw": 1, "pitch": None, "roll": 0}) is None
    assert geometry.angles_in({"yaw": float("inf"), "pitch": 0, "roll": 0}) is None and geometry.angles_in(None) is None
