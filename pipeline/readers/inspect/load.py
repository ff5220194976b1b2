"""Read-only access to an output folder: run info, manifests (selected columns), stats, plan."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import layout

SOURCE = "source"
PROVENANCE = ("model", "weights_sha256", "weights_random")
BASE_COLUMNS = ("key", "status", "error", "frame", *PROVENANCE)
# Stage columns the report plots or lists; anything absent from a manifest is skipped.
WANTED: dict[str, tuple[str, ...]] = {
    SOURCE: ("identity", "width", "height"),
    "detect": ("score", "face_size", "n_faces"),
    "landmarks": ("yaw", "pitch", "roll", "face_frac"),
    "pose": ("yaw", "pitch", "roll"),
    "expression": ("yaw", "pitch", "roll"),
    "identity": ("restore_cosine",),
    "caption": ("captions", "caption_scores"),
    "consistency": ("posenet_vs_pnp_deg", "tddfa_vs_pnp_deg", "tddfa_vs_posenet_deg",
                    "facemask_vs_hull_iou", "landmarks_in_box", "restore_cosine", "quality",
                    "quality_reasons", "random_stages"),
}


@dataclass
class StageData:
    """One stage's manifest rows (selected columns) and throughput stats."""

    name: str
    table: pa.Table
    seconds: float = 0.0
    n_timed: int = 0

    def values(self, column: str) -> np.ndarray:
        """Float values of ``column`` for ok rows, nulls and non-finite values dropped."""
        if column not in self.table.column_names:
            return np.zeros(0)
        ok = self.table.filter(pc.equal(self.table["status"], "ok"))[column]
        arr = ok.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        return arr[np.isfinite(arr)]

    def counts(self) -> dict[str, int]:
        return {str(r["values"]): int(r["counts"]) for r in pc.value_counts(self.table["status"]).to_pylist()}

    @property
    def img_per_s(self) -> float | None:
        return self.n_timed / self.seconds if self.seconds > 0 else None

    def provenance(self) -> list[dict[str, Any]]:
        """Distinct (model, weights_sha256, weights_random) of rows that ran, with their counts."""
        cols = [c for c in PROVENANCE if c in self.table.column_names]
        if not cols:
            return []
        ran = self.table.filter(pc.not_equal(self.table["status"], "skipped"))
        grouped = ran.select(cols).group_by(cols).aggregate([([], "count_all")])
        return sorted(grouped.to_pylist(), key=lambda r: -r["count_all"])


@dataclass
class RunData:
    """Everything the report reads from OUT, loaded once."""

    out: Path
    run: dict[str, Any] = field(default_factory=dict)
    config_text: str = ""
    stage_names: list[str] = field(default_factory=list)
    """The run's stages in run order (``source`` first)."""
    stages: dict[str, StageData] = field(default_factory=dict)
    identity_of: dict[str, str] = field(default_factory=dict)
    shard_of: dict[str, str] = field(default_factory=dict)
    shard_index: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return self.run.get("config", {})

    def random_stages(self) -> dict[str, str]:
        """Stages whose manifests (or the run's provenance) say the weights were random -> model."""
        found = {name: str(p.get("model", "")) for name, p in self.run.get("provenance", {}).items()
                 if p.get("weights_random")}
        for name, data in self.stages.items():
            for prov in data.provenance():
                if prov.get("weights_random"):
                    found.setdefault(name, str(prov.get("model") or ""))
        return {n: found[n] for n in self.stage_names if n in found}


def _read_stage(folder: Path, stage: str) -> pa.Table | None:
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        return None
    tables = []
    for path in files:
        names = pq.read_schema(path).names
        wanted = [c for c in (*BASE_COLUMNS, *WANTED.get(stage, ())) if c in names]
        tables.append(pq.read_table(path, columns=wanted))
    return pa.concat_tables(tables, promote_options="permissive")


def _stats(folder: Path) -> tuple[float, int]:
    seconds, n = 0.0, 0
    for path in sorted(folder.glob("*.json")):
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if stats.get("seconds"):
            seconds += float(stats["seconds"])
            n += int(stats.get("n", 0))
    return seconds, n


def load(out: Path) -> RunData:
    """Load what the report needs from an output folder (never writes)."""
    out = Path(out)
    if not layout.manifests(out).is_dir():
        raise FileNotFoundError(f"{out} holds no manifests/: not a pipeline output folder")
    data = RunData(out=out)
    if layout.run_json(out).is_file():
        data.run = json.loads(layout.run_json(out).read_text())
    if layout.config_yaml(out).is_file():
        data.config_text = layout.config_yaml(out).read_text()
    present = sorted(p.name for p in layout.manifests(out).iterdir() if p.is_dir())
    ordered = [SOURCE, *data.run.get("stages", [])]
    data.stage_names = [n for n in ordered if n in present] + [n for n in present if n not in ordered]
    for name in data.stage_names:
        table = _read_stage(layout.manifests(out, name), name)
        if table is None:
            continue
        seconds, n = _stats(layout.stats(out, name))
        data.stages[name] = StageData(name, table, seconds, n)
    data.stage_names = [n for n in data.stage_names if n in data.stages]
    if SOURCE in data.stages and "identity" in data.stages[SOURCE].table.column_names:
        src = data.stages[SOURCE].table
        data.identity_of = dict(zip(src["key"].to_pylist(), src["identity"].to_pylist()))
    plan = layout.plan_table(out)
    if plan.is_file():
        table = pq.read_table(plan, columns=["key", "shard"])
        data.shard_of = dict(zip(table["key"].to_pylist(), table["shard"].to_pylist()))
    index = layout.shard_index(out)
    if index.is_file():
        data.shard_index = json.loads(index.read_text())
    return data
