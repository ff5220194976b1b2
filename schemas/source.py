"""Columns of the ``source`` manifest: what the source step recorded about each input file."""
from __future__ import annotations

import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("identity", pa.string()),
        pa.field("location", pa.string()),  # path under the input root, or 'train.rec#<offset>'
        pa.field("sha256", pa.string()),  # of the raw bytes
        pa.field("bytes", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),  # JPEG, PNG, WEBP, ...
        pa.field("mode", pa.string()),  # PIL mode before conversion to RGB
        pa.field("note", pa.string()),
        pa.field("jpeg_quality", pa.int32()),  # estimated from the quantisation tables (JPEG only)  # conversions applied, e.g. 'converted:RGBA->RGB'
        pa.field("meta", pa.string()),  # JSON of source-specific metadata (e.g. CelebA attributes)
    ]
)
