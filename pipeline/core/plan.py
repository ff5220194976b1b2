"""The plan: the source listed once, keys sorted, shard membership fixed for the output folder."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import layout
from pipeline.core.manifest import read_manifest, sha256_file, write_json, write_table

DEFAULT_SHARD_SIZE = 1000

PLAN_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("location", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("meta", pa.string(), nullable=False),  # JSON of source-specific metadata
        pa.field("error", pa.string(), nullable=False),  # known at listing time (e.g. key collision)
        pa.field("size", pa.int64()),  # bytes at planning (None: not a plain file, e.g. RecordIO)
        pa.field("mtime_ns", pa.int64()),  # modification time at planning
    ]
)


class PlanError(ValueError):
    """The output folder belongs to another source, input or shard size."""


def shard_name(index: int) -> str:
    return f"{index:05d}"


@dataclass
class Plan:
    """Shard membership of an output folder."""

    info: dict[str, Any]
    table: pa.Table
    _runs: dict[str, list[tuple[int, int]]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.table.column("shard").to_pylist()))

    def rows(self, shard: str) -> list[dict[str, Any]]:
        # Slices, not a pyarrow.compute filter: the first compute call costs ~0.4 s in each worker.
        if self._runs is None:
            self._runs = {}
            for i, name in enumerate(self.table.column("shard").to_pylist()):
                runs = self._runs.setdefault(name, [])
                if runs and runs[-1][0] + runs[-1][1] == i:  # the row right after this shard's last run
                    runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                else:
                    runs.append((i, 1))
        return [row for start, n in self._runs.get(shard, ()) for row in self.table.slice(start, n).to_pylist()]

    def __len__(self) -> int:
        return self.table.num_rows


def plan_paths(out: Path) -> tuple[Path, Path]:
    return layout.plan_table(out), layout.plan_info(out)


def listing(source: Any, source_name: str) -> list[dict[str, Any]]:
    """The source listed now, sorted by key: plan rows without a shard (size and mtime stated)."""
    entries = sorted(source.list(), key=lambda e: e.key)
    seen: set[str] = set()
    rows = []
    for entry in entries:
        if entry.key in seen:  # sources make keys unique; this is the last line of defence
            raise PlanError(f"source '{source_name}' produced the key {entry.key!r} twice")
        seen.add(entry.key)
        size, mtime = source.stat(entry.location)
        rows.append({"key": entry.key, "identity": entry.identity, "location": entry.location,
                     "meta": json.dumps(entry.meta, sort_keys=True), "error": entry.error,
                     "size": size, "mtime_ns": mtime})
    return rows


def write(out: Path, info: dict[str, Any], rows: list[dict[str, Any]]) -> Plan:
    """Write the plan table and its info (counts, sha256)."""
    table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)
    table_path, info_path = plan_paths(out)
    write_table(table, table_path)
    info = {**info, "n_samples": table.num_rows, "n_shards": len(set(table.column("shard").to_pylist())),
            "plan_sha256": sha256_file(table_path)}
    write_json(info, info_path)
    return Plan(info, table)


def create(out: Path, source: Any, source_name: str, input_path: str | None, shard_size: int) -> Plan:
    """List the source, sort by key, cut into shards and write the plan (once per folder)."""
    if shard_size < 1:
        raise PlanError(f"shard size must be positive, got {shard_size}")
    rows = listing(source, source_name)
    for i, row in enumerate(rows):
        row["shard"] = shard_name(i // shard_size)
    info = {"source": source_name, "input": str(Path(input_path).resolve()) if input_path else None,
            "shard_size": shard_size,
            "skipped_files": dict(getattr(source, "skipped", {}))}  # left out on purpose, by reason
    return write(out, info, rows)


def load(out: Path) -> Plan | None:
    table_path, info_path = plan_paths(out)
    if not info_path.exists():
        return None
    info = json.loads(info_path.read_text())
    table = read_manifest(table_path)
    for name in ("size", "mtime_ns"):  # plans written before sizes were recorded
        if name not in table.column_names:
            table = table.append_column(PLAN_SCHEMA.field(name), pa.nulls(table.num_rows, pa.int64()))
    return Plan(info, table)


def load_or_create(out: Path, source: Any, source_name: str, input_path: str | None,
                   shard_size: int | None) -> Plan:
    """The existing plan (checked against the request) or a new one."""
    plan = load(out)
    if plan is None:
        return create(out, source, source_name, input_path, shard_size or DEFAULT_SHARD_SIZE)
    info = plan.info
    if info["source"] != source_name:
        raise PlanError(f"{out} was made from source '{info['source']}', not '{source_name}'; "
                        "use another --out")
    wanted_input = str(Path(input_path).resolve()) if input_path else None
    if info["input"] != wanted_input:
        raise PlanError(f"{out} was made from input {info['input']}, not {wanted_input}; use another --out")
    if shard_size is not None and shard_size != info["shard_size"]:
        raise PlanError(f"{out} has shard size {info['shard_size']}; shard membership is fixed once, "
                        f"so --shard-size {shard_size} is refused (use another --out, or drop the flag)")
    return plan
