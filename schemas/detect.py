"""Columns of the ``detect`` manifest: the main face, its five points and the aligned crop.

Point order: left eye, right eye, nose tip, left mouth corner, right mouth corner (as seen in
the image). ``affine`` maps source pixels to crop pixels: [a, b, tx, c, d, ty] is the row-major
2x3 matrix, crop = [[a, b], [c, d]] @ source + [tx, ty].

The main face is chosen by ``stages/face_choice.py``: ``choice_why`` lists its terms (score,
size, centre, shape, each 0..1) and the term the runner-up lost on.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("box", pa.list_(pa.float32())),  # x1, y1, x2, y2 of the main face, source px
        pa.field("score", pa.float32()),  # detector confidence of the main face, 0..1
        pa.field("points5", pa.list_(pa.float32())),  # 10 values: x0, y0, ..., x4, y4, source px
        pa.field("n_faces", pa.int32()),  # faces above the confidence threshold (main included)
        pa.field("face_size", pa.float32()),  # shorter side of the main face's box, source px
        pa.field("affine", pa.list_(pa.float32())),  # 6 values, source -> crop 2x3, row-major
        pa.field("points5_crop", pa.list_(pa.float32())),  # 10 values, crop px
        pa.field("choice_value", pa.float32()),  # main face's value under `select` (0..1)
        pa.field("choice_why", pa.string()),  # its score/size/centre/shape terms, what the runner-up lost on
        pa.field("runner_up_box", pa.list_(pa.float32())),  # second-best face's box, null when alone
        pa.field("runner_up_score", pa.float32()),  # its detector confidence
        pa.field("runner_up_value", pa.float32()),  # its value under `select`
    ]
)
