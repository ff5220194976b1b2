"""``hf``: WebDataset tars that ``datasets.load_dataset("webdataset", data_dir=DIR)`` loads.

One ``train-<shard>.tar`` per OUT shard with selected samples. Per sample: every member of the
packed shard (``jpg``, ``lmk.npy``, ``mask.png``, ``id.npy``, ...; images become ``Image``
features, ``.npy`` arrays lists) and a rewritten ``json``: the shard json plus ``caption``
(best kept caption or the fallback) and ``audit`` (the sample's audit row, when the audit ran).
``README.md`` is the dataset card (``pipeline/readers/card.py``) describing these tars.
The datasets library infers the features from the first examples, so the json is made
type-stable: a float column that is null for a sample is written as NaN (JSON ``NaN``, which
Python's json reads), a null float list as ``[NaN]`` (another shard may hold real values: its
type must already be a float list), another null list as ``[]``, empty mappings are dropped, and every sample has the same members.
"""
from __future__ import annotations

import importlib
import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import layout
from pipeline.readers.export import Context, caption_of
from pipeline.core.manifest import TarWriter
from schemas.shard import META

_COLUMNS: dict[tuple[str, str], set[str]] = {}


def _columns_of(stage: str, kind: str) -> set[str]:
    """Names of a stage's manifest columns of one kind (float or list), from its schema module."""
    if (stage, kind) not in _COLUMNS:
        from schemas.common import COMMON

        test = {"float": pa.types.is_floating,
                "float_list": lambda t: pa.types.is_list(t) and pa.types.is_floating(t.value_type),
                "list": pa.types.is_list}[kind]
        names = {f.name for f in COMMON if test(f.type)}
        try:
            schema = importlib.import_module(f"schemas.{stage.replace('-', '_')}").SCHEMA
            names |= {f.name for f in schema if test(f.type)}
        except (ImportError, AttributeError):
            pass
        _COLUMNS[(stage, kind)] = names
    return _COLUMNS[(stage, kind)]


def float_columns(stage: str) -> set[str]:
    return _columns_of(stage, "float")


def stable(value: Any) -> Any:
    """Drop empty mappings (an empty struct has no Arrow type)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not (isinstance(v, dict) and not v)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def annotations(meta: dict[str, Any], caption: str, audit_row: dict[str, Any] | None) -> dict[str, Any]:
    """The json of one sample, with null floats as NaN so every example has the same types."""
    doc: dict[str, Any] = {}
    for name, value in meta.items():
        if isinstance(value, dict) and name != "source":
            floats, float_lists, lists = float_columns(name), _columns_of(name, "float_list"), _columns_of(name, "list")
            value = {k: (v if v is not None else math.nan if k in floats else [math.nan] if k in float_lists
                         else [] if k in lists else None) for k, v in value.items()}
        doc[name] = value
    doc["caption"] = caption if "caption" not in meta else {**doc["caption"], "text": caption}
    if audit_row is not None:
        doc["audit"] = {k: ("" if v is None else v) for k, v in audit_row.items()
                        if k not in ("key", "identity")}
        doc["audit"]["centroid_cosine"] = (math.nan if audit_row["centroid_cosine"] is None
                                           else audit_row["centroid_cosine"])
    return stable(doc)


def export(ctx: Context) -> dict[str, Any]:
    """Write ``train-<shard>.tar`` files (OUT's sharding); counts."""
    plan = pq.read_table(layout.plan_table(ctx.out), columns=["key", "shard"])
    shard_of = dict(zip(plan.column("key").to_pylist(), plan.column("shard").to_pylist()))
    writer: TarWriter | None = None
    shard, members_seen = None, None
    counts = {"samples": 0, "fallback_captions": 0, "tars": 0}
    identities: set[str] = set()
    per_tar: list[list] = []  # [tar name, samples] for the card's wids line
    try:
        for sample in ctx.samples():  # shard order: one tar open at a time
            if shard_of[sample.key] != shard:
                if writer is not None:
                    writer.close()
                shard = shard_of[sample.key]
                writer = TarWriter(ctx.to / f"train-{shard}.tar")
                counts["tars"] += 1
                per_tar.append([f"train-{shard}.tar", 0])
            caption, real = caption_of(sample)
            counts["fallback_captions"] += not real
            audit_row = ctx.audit.get(sample.key) if ctx.audit is not None else None
            members = {**sample.files, META: json.dumps(annotations(sample.meta, caption, audit_row),
                                                        sort_keys=True).encode()}
            if members_seen is None:
                members_seen = set(members)
            elif set(members) != members_seen:
                ctx.warn("samples do not all have the same members: datasets fills the missing ones with None")
            for suffix in sorted(members):
                writer.add(f"{sample.key}.{suffix}", members[suffix])
            counts["samples"] += 1
            per_tar[-1][1] += 1
            identities.add(sample.identity)
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    ctx.writer.counts["written"] += counts["tars"]
    counts["identities"] = len(identities)
    if per_tar:
        from pipeline.readers.card import CARD, write_card

        write_card(ctx.out, to=ctx.to / CARD, data_files="train-*.tar", tar=ctx.to / per_tar[0][0],
                   num_examples=counts["samples"], shards=[(t, n) for t, n in per_tar],
                   note=f"This copy is a `pipeline export --format hf` of {counts['samples']} selected samples.")
        ctx.writer.counts["written"] += 1
    return counts
