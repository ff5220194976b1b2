"""Manifest columns of the ``expression`` stage (3DDFA-V2 3DMM regression).

``params`` are the 62 de-normalised 3DDFA-V2 parameters: 12 pose values (a 3x4 scaled camera
matrix, row-major), then 40 BFM identity-shape and 10 expression coefficients (``shape`` and
``expression`` repeat those slices). The coefficients follow 3DDFA-V2's own BFM bases, so they
are comparable between samples of one model, not across models.

Head pose comes from the camera matrix the way 3DDFA-V2 computes it (rows normalised by their
scale, third row their cross product, Euler angles of that rotation), with signs converted to
the convention of the ``landmarks`` and ``pose`` stages:

* yaw > 0: the face is turned towards the image's left (the subject turned to their own right);
* pitch > 0: the face points up (chin raised);
* roll > 0: the face is rotated clockwise on screen (the eye on the image's right is lower).

3DDFA-V2's raw angles use the same yaw sign and the opposite pitch and roll signs. Mirroring the
image flips yaw and roll and keeps pitch.

``diff_to_landmarks_deg`` / ``diff_to_posenet_deg``: mean over yaw, pitch and roll of the
absolute angle difference (wrapped to [-180, 180]) to the ``landmarks`` stage's solvePnP pose /
the ``pose`` stage's head-pose net, for the same frame; null when that stage's row is absent.

``roi_source`` says where the face ROI came from: ``points5_crop`` (detect's points in the
aligned crop), ``template`` (the FFHQ template of the aligned crop, when the points are
missing), ``box`` (detect's box, source frame), ``points5`` (detect's points, source frame)
or ``centre`` (no detect: a centred square, see the stage's ``no_detect_roi``).
"""
from __future__ import annotations

import pyarrow as pa

N_PARAMS, N_SHAPE, N_EXPRESSION = 62, 40, 10
EXPR_FILE = "expr.npy"  # float32 (10,): the expression coefficients
ROI_SOURCES = ("points5_crop", "template", "box", "points5", "centre")

SCHEMA = pa.schema(
    [
        pa.field("yaw", pa.float32()),  # degrees, signs as in the module docstring
        pa.field("pitch", pa.float32()),
        pa.field("roll", pa.float32()),
        pa.field("shape", pa.list_(pa.float32())),  # 40 BFM shape coefficients
        pa.field("expression", pa.list_(pa.float32())),  # 10 BFM expression coefficients
        pa.field("params", pa.list_(pa.float32())),  # all 62 de-normalised parameters
        pa.field("diff_to_landmarks_deg", pa.float32(), nullable=True),
        pa.field("diff_to_posenet_deg", pa.float32(), nullable=True),
        pa.field("roi_source", pa.string()),  # one of ROI_SOURCES
    ]
)
