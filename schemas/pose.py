"""Manifest columns of the ``pose`` stage (Hopenet-style 66-bin head-pose classifier).

Angles are degrees, the expectation over 3-degree bins of the classifier's softmax. Sign
convention (Hopenet / 300W-LP, the same as the ``landmarks`` stage's solvePnP pose):

* yaw > 0: the face is turned towards the image's left (the subject turned to their own right);
* pitch > 0: the face points up (chin raised);
* roll > 0: the face is rotated clockwise on screen (the eye on the image's right is lower).

Mirroring the image flips yaw and roll and keeps pitch. Checked on real photos with the bundled
lightweight net: yaw anti-correlates with the nose's offset from the eye midpoint (r = -0.85,
nose right of the eyes = negative yaw), roll follows the eye-line angle (r = 0.93).

``pnp_diff_*`` = this stage's angle minus the ``landmarks`` stage's PnP angle for the same frame,
null when no landmarks row is available. ``pose.png`` is an RGB image of the frame's size: the
head axes on black, x red (image right), y green (down), z blue (out of the face), drawn from
the face centre (mean of detect's five crop points, else the image centre).
"""
from __future__ import annotations

import pyarrow as pa

POSE_IMAGE = "pose.png"

SCHEMA = pa.schema(
    [
        pa.field("yaw", pa.float32()),  # degrees, signs as in the module docstring
        pa.field("pitch", pa.float32()),
        pa.field("roll", pa.float32()),
        pa.field("pnp_diff_yaw", pa.float32(), nullable=True),  # this - landmarks PnP; null: none
        pa.field("pnp_diff_pitch", pa.float32(), nullable=True),
        pa.field("pnp_diff_roll", pa.float32(), nullable=True),
    ]
)
