"""Columns of the ``identity`` manifest: a face-recognition embedding of the aligned face.

The embedding is L2-normalised, so the cosine similarity of two faces is their dot product.
The same vector is written to the shard as ``<key>.id.npy`` (float32, shape (dim,)).
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("embedding", pa.list_(pa.float32())),  # unit-length, ``dim`` values
        pa.field("dim", pa.int32()),  # 512 for arcface_irse50, 128 for mobilefacenet
        pa.field("norm_before", pa.float32()),  # L2 norm before normalising (rough quality cue)
        # Identity drift of restoration: cosine between the embeddings of the aligned crop before
        # and after restore (null when restore did not run). Low values: CodeFormer changed who it is.
        pa.field("restore_cosine", pa.float32()),
    ]
)
