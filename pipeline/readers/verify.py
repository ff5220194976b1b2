"""``pipeline verify OUT``: check every finished output against the checksums its marker recorded.

A done marker lists the files it vouches for with size and sha256. A file that is missing,
truncated or altered, or a marker that cannot be read, is reported; unless ``dry_run``, the
marker is removed so the next run redoes exactly those stage-shards (and nothing else).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline import layout
from pipeline.core.manifest import read_marker, sha256_file


@dataclass(frozen=True)
class Problem:
    path: str
    """The bad file, relative to OUT."""
    reason: str
    marker: str
    """The done marker that vouched for it (removed unless dry_run)."""


def _check_marker(out: Path, marker: Path) -> list[Problem]:
    rel_marker = str(marker.relative_to(out))
    data = read_marker(marker)
    if data is None:
        return [Problem(rel_marker, "unreadable done marker", rel_marker)]
    problems = []
    for rel, info in sorted(data["files"].items()):
        path = out / rel
        if not path.is_file():
            problems.append(Problem(rel, "missing", rel_marker))
        elif path.stat().st_size != info["size"]:
            problems.append(Problem(rel, f"size {path.stat().st_size} != recorded {info['size']} (truncated?)",
                                    rel_marker))
        elif sha256_file(path) != info["sha256"]:
            problems.append(Problem(rel, "sha256 differs from the recorded one (corrupted)", rel_marker))
    return problems


def verify(out: Path, dry_run: bool = False) -> tuple[list[Problem], int]:
    """Problems found and the number of markers checked."""
    out = Path(out)
    if not layout.plan_info(out).exists():
        raise FileNotFoundError(f"{out} is not a pipeline output folder (no plan/plan.json)")
    problems: list[Problem] = []
    info = json.loads(layout.plan_info(out).read_text())
    plan = layout.plan_table(out)
    if not plan.exists() or sha256_file(plan) != info.get("plan_sha256"):
        problems.append(Problem("plan/plan.parquet", "plan differs from plan.json: shard membership is lost; "
                                "start a new output folder", ""))
    markers = sorted(layout.done(out).glob("*/*.json"))
    for marker in markers:
        problems.extend(_check_marker(out, marker))
    if not dry_run:
        for marker in {p.marker for p in problems if p.marker}:
            (out / marker).unlink(missing_ok=True)
    return problems, len(markers)
