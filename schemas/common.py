"""Columns every stage manifest row carries, and helpers to validate a stage's columns."""
from __future__ import annotations

import pyarrow as pa

COMMON = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | skipped | error
        pa.field("error", pa.string(), nullable=False),  # reason code[: detail], '' when ok
        pa.field("duration_s", pa.float32()),  # this sample's share of its batch time
        pa.field("stage", pa.string(), nullable=False),
        pa.field("stage_version", pa.string(), nullable=False),
        pa.field("frame", pa.string()),  # image the stage saw: source | aligned | restored
        pa.field("model", pa.string()),
        pa.field("weights_sha256", pa.string()),
        pa.field("weights_random", pa.bool_()),  # True: random weights, not a real annotation
        pa.field("config_hash", pa.string(), nullable=False),
    ]
)

TIMING_COLUMNS = ("duration_s",)


def manifest_schema(stage_columns: pa.Schema) -> pa.Schema:
    """The full manifest schema of a stage: common columns then the stage's own."""
    clash = set(COMMON.names) & set(stage_columns.names)
    if clash:
        raise ValueError(f"stage columns clash with common columns: {sorted(clash)}")
    # Stage columns are nullable in the manifest: skipped and error rows carry no values.
    return pa.schema(list(COMMON) + [f.with_nullable(True) for f in stage_columns])
