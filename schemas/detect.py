"""Columns of the ``detect`` manifest: the main face, its five points and the aligned crop.

Point order: left eye, right eye, nose tip, left mouth corner, right mouth corner (as seen in
the image). ``affine`` maps source pixels to crop pixels: [a, b, tx, c, d, ty] is the row-major
2x3 matrix, crop = [[a, b], [c, d]] @ source + [tx, ty].
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
    ]
)
