"""Columns of the cross-folder leakage audit (``pipeline audit OUT --against OTHER``).

``OUT/audit/leaks.parquet`` holds one row per leak found between OUT and each ``--against``
folder (``against``: its resolved path). Two levels:

- ``identity``: an identity of OUT whose robust centroid has cosine >= ``threshold`` (the
  embedding model's same-identity cosine from the weights registry) with the centroid of
  ``other_identity``. ``pairs_above_threshold`` / ``pairs_total`` (= ``pair_fraction``) count the
  photo pairs across the two identities above the same threshold; ``key`` is null.
- ``sample``: a sample of OUT (``key``) that is the same file (``kind = exact``: same source
  sha256) or a near-duplicate (``kind = near``: embedding cosine >= ``near_threshold``) of
  ``other_key``. Every exact match is listed; a key without one gets its best near match.

``cosine`` is the centroid cosine (identity rows) or the photo cosine (sample rows; null for an
exact match where either side has no embedding).
"""
from __future__ import annotations

import pyarrow as pa

LEAKS_FILE = "leaks.parquet"  # under OUT/audit/ (schemas.audit.AUDIT_DIR)
LEVELS = ("identity", "sample")
KINDS = ("identity", "exact", "near")

SCHEMA = pa.schema(
    [
        pa.field("level", pa.string(), nullable=False),  # identity | sample
        pa.field("kind", pa.string(), nullable=False),  # identity | exact | near
        pa.field("against", pa.string(), nullable=False),  # resolved path of the other folder
        pa.field("identity", pa.string(), nullable=False),  # identity in OUT
        pa.field("key", pa.string()),  # key in OUT (sample rows)
        pa.field("other_identity", pa.string(), nullable=False),
        pa.field("other_key", pa.string()),  # key in the other folder (sample rows)
        pa.field("cosine", pa.float32()),  # centroid cosine (identity) or photo cosine (sample)
        pa.field("n", pa.int32()),  # samples with an embedding of the identity in OUT
        pa.field("other_n", pa.int32()),
        pa.field("pairs_above_threshold", pa.int64()),  # identity rows: cross photo pairs >= threshold
        pa.field("pairs_total", pa.int64()),
        pa.field("pair_fraction", pa.float32()),
        pa.field("threshold", pa.float32(), nullable=False),  # same-identity cosine of the model
        pa.field("near_threshold", pa.float32(), nullable=False),
        pa.field("model", pa.string()),  # registry name of the embedding model
    ]
)
