"""Columns of the identity-purity audit (``pipeline audit OUT``), written under ``OUT/audit/``.

``identity.parquet``: one row per sample whose source row is ok. ``centroid_cosine`` is the
cosine of the sample's embedding to its identity's robust centroid computed WITHOUT the sample
itself (leave-one-out, so a small identity's centroid is not pulled towards the sample under
test); null when the sample has no embedding or is alone in its identity. ``outlier``:
``centroid_cosine < threshold``, where ``threshold`` is the embedding model's same/different
identity cosine (``spec.extra["same_identity_cosine"]`` in ``stages.models.registry``).

``duplicate_of`` names the first key (sorted) of the same identity with the same source sha256;
``near_duplicate_of`` the first key of the same identity whose embedding cosine is above the
near-duplicate threshold (``summary.json``); both are null when none. ``exclude_from_pairing``
is true for duplicates, near-duplicates (every member of a group but its first key) and
outliers: a trainer's pair builder skips those keys.

``merges.parquet``: one row per identity pair that looks like one person: centroid cosine at
least the same-identity threshold, or at least one exact duplicate across the two. The evidence
counts come from the pairs of samples across the two identities.
"""
from __future__ import annotations

import pyarrow as pa

AUDIT_DIR = "audit"
IDENTITY_FILE = "identity.parquet"
MERGES_FILE = "merges.parquet"
SUMMARY_FILE = "summary.json"

SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("centroid_cosine", pa.float32()),  # leave-one-out robust centroid; null: no embedding / alone
        pa.field("outlier", pa.bool_(), nullable=False),  # centroid_cosine < threshold
        pa.field("threshold", pa.float32()),  # same-identity cosine of the model
        pa.field("duplicate_of", pa.string()),  # first key with the same sha256, same identity
        pa.field("near_duplicate_of", pa.string()),  # first key with cosine >= near threshold
        pa.field("exclude_from_pairing", pa.bool_(), nullable=False),
        pa.field("model", pa.string()),  # registry name of the embedding model
    ]
)

MERGE_SCHEMA = pa.schema(
    [
        pa.field("identity_a", pa.string(), nullable=False),  # identity_a < identity_b
        pa.field("identity_b", pa.string(), nullable=False),
        pa.field("centroid_cosine", pa.float32()),  # robust centroids; null when one has none
        pa.field("n_a", pa.int32()),  # samples with an embedding
        pa.field("n_b", pa.int32()),
        pa.field("pairs_above_threshold", pa.int64()),  # cross pairs with cosine >= threshold
        pa.field("pairs_total", pa.int64()),  # n_a * n_b
        pa.field("exact_duplicates", pa.int64()),  # cross pairs with the same sha256
        pa.field("near_duplicates", pa.int64()),  # cross pairs with cosine >= near threshold
        pa.field("threshold", pa.float32()),
        pa.field("model", pa.string()),
    ]
)
