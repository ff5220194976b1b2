"""Noticing input changes: every run compares the input folder with the plan.

Cheap first (size and mtime from a directory listing), sha256 only where those differ and an
earlier run recorded one. Added, deleted and changed files are reported in one message; without
``--refresh`` the run refuses, so a stale row is never kept silently. With it, changed and
deleted keys are removed from every output of their shard (their shard is then redone for just
those keys: everything else is copied byte for byte), added keys go into new shards, and files
whose bytes did not change (only the mtime) are noted in the plan.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import layout
from pipeline.core import plan as plan_mod
from pipeline.core.manifest import ShardOutputs, read_manifest, write_json, write_table
from pipeline.core.read import SOURCE, SOURCE_IMAGE
from pipeline.core.store import unpack

EXAMPLES = 3


def flag_path(out: Path, shard: str) -> Path:
    return layout.refresh_note(out, shard)


def pending(out: Path, shard: str) -> bool:
    """The shard was refreshed: redo only the keys missing from its outputs."""
    return flag_path(out, shard).exists()


def clear(out: Path, shard: str) -> None:
    flag_path(out, shard).unlink(missing_ok=True)


@dataclass
class InputChanges:
    """How the input folder differs from the plan."""

    added: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    touched: list[dict[str, Any]] = field(default_factory=list)
    """Same bytes (or never read yet), new size/mtime: the plan is updated, nothing is redone."""

    def __bool__(self) -> bool:
        return bool(self.added or self.deleted or self.changed)

    def message(self) -> str:
        parts = []
        for label, rows in (("added", self.added), ("deleted", self.deleted), ("changed", self.changed)):
            if rows:
                keys = ", ".join(r["key"] for r in rows[:EXAMPLES]) + (", ..." if len(rows) > EXAMPLES else "")
                parts.append(f"{len(rows)} {label} ({keys})")
        return "the input changed since this output was planned: " + "; ".join(parts)


def _recorded_sha(out: Path, shard: str) -> dict[str, str]:
    path = ShardOutputs(out, SOURCE, shard).manifest
    if not path.exists():
        return {}
    table = read_manifest(path, columns=["key", "sha256"])
    return {k: s for k, s in zip(table.column("key").to_pylist(), table.column("sha256").to_pylist()) if s}


def compare(out: Path, plan: plan_mod.Plan, now: list[dict[str, Any]], source: Any) -> InputChanges:
    """Compare a fresh listing (``plan.listing``) with the plan."""
    planned = {r["key"]: r for r in plan.table.to_pylist()}
    listed = {r["key"]: r for r in now}
    changes = InputChanges(added=[r for k, r in listed.items() if k not in planned],
                           deleted=[r for k, r in planned.items() if k not in listed])
    shas: dict[str, dict[str, str]] = {}
    for key, new in listed.items():
        old = planned.get(key)
        if old is None or (old["location"], old["size"], old["mtime_ns"]) == (new["location"], new["size"], new["mtime_ns"]):
            continue
        new = {**new, "shard": old["shard"]}
        if old["location"] != new["location"] or new["error"] != old["error"]:
            changes.changed.append(new)
            continue
        if old["shard"] not in shas:
            shas[old["shard"]] = _recorded_sha(out, old["shard"])
        recorded = shas[old["shard"]].get(key)
        if recorded is None:  # never read: nothing was computed from the old bytes
            changes.touched.append(new)
            continue
        try:
            same = hashlib.sha256(source.read(new["location"])).hexdigest() == recorded
        except (OSError, ValueError):
            same = False
        (changes.touched if same else changes.changed).append(new)
    return changes


def apply(out: Path, plan: plan_mod.Plan, changes: InputChanges, source: Any = None) -> plan_mod.Plan:
    """Re-plan: drop changed/deleted keys from their shards' outputs, add new shards for added keys."""
    gone = {r["key"] for r in changes.deleted} | {r["key"] for r in changes.changed}
    updates = {r["key"]: r for r in changes.changed + changes.touched}
    deleted = {r["key"] for r in changes.deleted}
    rows = [{**updates.get(r["key"], r), "shard": r["shard"]} for r in plan.table.to_pylist() if r["key"] not in deleted]
    affected = {r["shard"] for r in plan.table.to_pylist() if r["key"] in gone}
    size = plan.info["shard_size"]
    next_index = max((int(r["shard"]) for r in rows), default=-1) + 1
    for i, row in enumerate(sorted(changes.added, key=lambda r: r["key"])):
        rows.append({**row, "shard": plan_mod.shard_name(next_index + i // size)})
    info = {k: plan.info[k] for k in ("source", "input", "shard_size")}
    info["skipped_files"] = dict(getattr(source, "skipped", plan.info.get("skipped_files", {})))
    new_plan = plan_mod.write(out, info, rows)
    remaining = set(new_plan.shards)
    for shard in sorted(affected):
        if shard in remaining:
            _drop_keys(out, shard, gone)
            write_json({"keys": sorted(gone & _keys_of(plan, shard))}, flag_path(out, shard))
        else:
            _remove_shard(out, shard)
    return new_plan


def _keys_of(plan: plan_mod.Plan, shard: str) -> set[str]:
    return set(plan.table.filter(pc.equal(plan.table.column("shard"), shard)).column("key").to_pylist())


def _stage_dirs(out: Path) -> list[str]:
    root = layout.manifests(out)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _drop_keys(out: Path, shard: str, keys: set[str]) -> None:
    """Remove ``keys`` from every stage's manifest and payload of ``shard``; unmark it."""
    for stage in _stage_dirs(out):
        outs = ShardOutputs(out, stage, shard)
        if outs.manifest.exists():
            table = read_manifest(outs.manifest)
            mask = pc.invert(pc.is_in(table.column("key"), value_set=pa.array(sorted(keys), pa.string())))
            write_table(table.filter(mask), outs.manifest)
        unpack(out, stage, shard, drop=keys, last=_last_suffix(out, stage))
        outs.marker.unlink(missing_ok=True)
    layout.pack_marker(out, shard).unlink(missing_ok=True)


def _last_suffix(out: Path, stage: str) -> str | None:
    """The frame member a stage writes after its files (the order payloads keep)."""
    if stage == SOURCE:
        return SOURCE_IMAGE
    try:
        from stages import stage_class

        frame = stage_class(stage).produces_frame
    except KeyError:
        return None
    if not frame:
        return None
    import json

    try:
        fmt = json.loads(layout.run_json(out).read_text()).get("frames", "jpg")
    except (OSError, ValueError):
        fmt = "jpg"
    return f"{frame}.{fmt}"


def _remove_shard(out: Path, shard: str) -> None:
    """Every key of the shard was deleted: its outputs go."""
    for root, suffix in ((layout.manifests(out), "parquet"), (layout.payloads(out), "tar"), (layout.done(out), "json"),
                         (layout.stats(out), "json"), (layout.journal(out), "json")):
        for path in root.glob(f"*/{shard}.{suffix}") if root.is_dir() else ():
            path.unlink(missing_ok=True)
    layout.shard_tar(out, shard).unlink(missing_ok=True)
