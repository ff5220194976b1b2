"""Manifest columns of the ``restore`` stage (CodeFormer blind face restoration).

The stage's frame output is the restored 512x512 RGB crop (downstream stages see
``frame = restored``); ``raw.jpg`` keeps the crop it was given, so the annotation frame and the
un-restored pixels stay side by side in a shard. The identity drift of restoration is measured
by the identity stage, which embeds both crops: ``identity.restore_cosine``.
"""
from __future__ import annotations

import pyarrow as pa

RAW_IMAGE = "raw.jpg"

SCHEMA = pa.schema(
    [
        pa.field("fidelity_w", pa.float32()),  # CodeFormer w: 0 = most restoration, 1 = most faithful
        pa.field("input_frame", pa.string()),  # frame restored: aligned | source | ...
    ]
)
