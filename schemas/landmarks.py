"""Manifest columns of the ``landmarks`` stage (mediapipe face mesh).

Coordinates are in pixels of the frame the stage saw (the ``frame`` common column): continuous,
pixel (i, j) covering [i, i+1) x [j, j+1), i.e. mediapipe's normalised x, y times width,
height. ``lmk.npy`` holds float32 (N, 3) points: x, y as above and z = mediapipe's z times the
image width (same scale as x; smaller = nearer the camera, 0 near the head's centre). N and
the point layout are given by ``mesh``: ``mediapipe468`` (face mesh) or ``mediapipe478``
(refined: the same 468 points, then 5 right-iris and 5 left-iris points; mediapipe's
indices 468-472 are the subject's right iris, 473-477 the left).

Head pose (degrees) comes from cv2.solvePnP of a canonical 3-D face
(``stages/data/face_model.npz``, tilted by ``stages.geometry.REFERENCE_PITCH_DEG`` to the
learned estimators' frontal) onto the 2-D landmarks, a near-orthographic camera (focal length
``FOCAL_WIDTHS`` = 20 image widths, principal point = image centre), as the 300W-LP / 3DDFA
labels the other estimators learnt. Sign convention, chosen to match Hopenet / 300W-LP labels:

* yaw > 0: the face is turned towards image left (the subject turned to their own right, so
  the camera sees more of their left cheek);
* pitch > 0: the face points up (chin raised);
* roll > 0: the face is rotated clockwise on screen (the eye on the image's right side is lower,
  i.e. the head leans towards the subject's left shoulder).

Mirroring the image horizontally flips the signs of yaw and roll and keeps pitch. On the
shared real photos the median |difference| to the 66-bin pose net and to 3DDFA-V2 is under
3 degrees per angle (docs/benchmarks.md, section wild).

``n_faces`` counts the meshes mediapipe found in the frame (up to ``max_faces``); the mesh
kept is the one matching detect's five points.
"""
from __future__ import annotations

import pyarrow as pa

MESH_468 = "mediapipe468"
MESH_478 = "mediapipe478"
MESHES = (MESH_468, MESH_478)

# outer eye corners: the subject's right (image left when frontal), then left
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263

SCHEMA = pa.schema(
    [
        pa.field("mesh", pa.string()),  # mediapipe468 | mediapipe478: layout of lmk.npy
        pa.field("n_landmarks", pa.int16()),
        pa.field("bbox_x0", pa.float32()),  # landmark bounding box, pixels
        pa.field("bbox_y0", pa.float32()),
        pa.field("bbox_x1", pa.float32()),
        pa.field("bbox_y1", pa.float32()),
        pa.field("interocular_px", pa.float32()),  # outer eye corners (33, 263), pixels
        pa.field("yaw", pa.float32()),  # degrees, signs as in the module docstring
        pa.field("pitch", pa.float32()),
        pa.field("roll", pa.float32()),
        pa.field("pose_rmse_px", pa.float32()),  # solvePnP reprojection error, pixels
        pa.field("face_frac", pa.float32()),  # share of image pixels covered by the mesh
        pa.field("n_faces", pa.int16()),  # meshes mediapipe found in the frame (the kept one included)
    ]
)
