"""Gallery cards: a deterministic sample of packed samples (thumbnails from the shards) plus
failed samples (key, stage, reason from the manifests)."""
from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from pipeline import layout
from pipeline.readers.inspect import images
from pipeline.readers.inspect.load import SOURCE, RunData
from schemas.shard import meta_section

MAX_ERROR_CARDS = 60


@dataclass
class Card:
    """One gallery entry."""

    key: str
    identity: str
    status: str = "ok"
    stage: str = ""
    """First stage (run order) whose row is not ok; empty for packed samples."""
    error: str = ""
    layers: list[tuple[str, str]] = field(default_factory=list)
    """(label, path relative to the report folder) of each thumbnail."""
    facts: list[tuple[str, str]] = field(default_factory=list)
    quality: str | None = None
    reasons: list[str] = field(default_factory=list)
    random_stages: list[str] = field(default_factory=list)
    captions: list[tuple[str, float | None]] = field(default_factory=list)

    @property
    def flags(self) -> list[str]:
        out = [f"quality:{self.quality}"] if self.quality else []
        out += [r for r in self.reasons if r not in out]
        if self.random_stages and "random_weights" not in out:
            out.append("random_weights")
        return out


def _spread(groups: dict[str, list[str]], cap: int) -> list[str]:
    """Round-robin over groups (in a stable hashed order, so no group is favoured by its name)."""
    order = sorted(groups, key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    queues = [sorted(groups[g]) for g in order]
    picked: list[str] = []
    depth = 0
    while len(picked) < cap and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(picked) < cap:
                picked.append(q[depth])
        depth += 1
    return picked


def outcomes(data: RunData) -> dict[str, tuple[str, str, str]]:
    """key -> (status, stage, error) of the first non-ok row in run order; absent keys are ok."""
    found: dict[str, tuple[str, str, str]] = {}
    for name in data.stage_names:
        table = data.stages[name].table
        bad = table.filter(pc.not_equal(table["status"], "ok")).select(["key", "status", "error"])
        for row in bad.to_pylist():
            found.setdefault(row["key"], (row["status"], name, row["error"]))
    return found


def _file_stem(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", key)
    return safe if safe == key else f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _read_members(shard: Path, keys: set[str]) -> dict[str, dict[str, bytes]]:
    """key -> {suffix: bytes} for the wanted keys of one shard tar."""
    found: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            key, _, suffix = member.name.partition(".")
            if key in keys and member.isfile():
                handle = tar.extractfile(member)
                if handle is not None:
                    found.setdefault(key, {})[suffix] = handle.read()
    return found


def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _stage(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """A stage's columns in a shard's json ({} when absent)."""
    value = meta.get(meta_section(name))
    return value if isinstance(value, dict) else {}


def _card(key: str, identity: str, files: dict[str, bytes], img_dir: Path) -> Card:
    meta = json.loads(files.get("json", b"{}") or b"{}")
    card = Card(key=key, identity=identity)
    stem = _file_stem(key)

    def save(label: str, rgb: np.ndarray) -> None:
        name = f"{stem}.{label}.jpg"
        (img_dir / name).write_bytes(images.encode_jpeg(rgb))
        card.layers.append((label, f"img/{name}"))

    frame = images.decode(files["jpg"]) if "jpg" in files else None
    if frame is not None:
        if "raw.jpg" in files and (raw := images.decode(files["raw.jpg"])) is not None:
            save("raw", images.fit(raw))
        save("restored" if "raw.jpg" in files else "frame", images.fit(frame))
        if "lmk.npy" in files and (lmk := images.load_npy(files["lmk.npy"])) is not None and lmk.ndim == 2:
            save("landmarks", images.landmarks_over(frame, lmk))
        if "pose.png" in files and (pose := images.decode(files["pose.png"])) is not None:
            save("pose", images.axes_over(frame, pose))
        if "depth.png" in files and (depth := images.decode(files["depth.png"], unchanged=True)) is not None:
            save("depth", images.depth_colour(depth))
        if "mask.png" in files and (mask := images.decode(files["mask.png"], unchanged=True)) is not None:
            save("mask", images.labels_over(frame, mask, images.MASK_PALETTE))
        if "parsing.png" in files and (lab := images.decode(files["parsing.png"], unchanged=True)) is not None:
            save("parsing", images.labels_over(frame, lab, images.PARSING_PALETTE))
    det, pose = _stage(meta, "detect"), _stage(meta, "pose") or _stage(meta, "landmarks")
    if det:
        card.facts.append(("det", f"{_fmt(det.get('score'), 3)} · {_fmt(det.get('face_size'), 0)} px"))
    if pose:
        card.facts.append(("ypr", " / ".join(_fmt(pose.get(a)) for a in ("yaw", "pitch", "roll"))))
    if (emotion := _stage(meta, "attributes").get("emotion")) is not None:
        card.facts.append(("emotion", str(emotion)))
    if (cos := _stage(meta, "identity").get("restore_cosine")) is not None:
        card.facts.append(("id cos", _fmt(cos, 3)))
    cons = _stage(meta, "consistency")
    card.quality, card.reasons = cons.get("quality"), list(cons.get("quality_reasons") or [])
    card.random_stages = sorted(n for n, cols in meta.items()
                                if isinstance(cols, dict) and cols.get("weights_random"))
    cap = _stage(meta, "caption")
    scores = list(cap.get("caption_scores") or [])
    for i, text in enumerate(cap.get("captions") or []):
        card.captions.append((str(text), scores[i] if i < len(scores) else None))
    return card


def build(data: RunData, report_dir: Path, max_samples: int) -> list[Card]:
    """Write thumbnails under ``report_dir/img`` and return the gallery cards (ok ones first)."""
    img_dir = report_dir / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    failed = outcomes(data)
    keys = data.stages[SOURCE].table["key"].to_pylist() if SOURCE in data.stages else []
    by_identity: dict[str, list[str]] = {}
    for key in keys:
        if key not in failed:
            by_identity.setdefault(data.identity_of.get(key, ""), []).append(key)
    picked = _spread(by_identity, max_samples)
    by_shard: dict[str, set[str]] = {}
    for key in picked:
        by_shard.setdefault(data.shard_of.get(key, ""), set()).add(key)
    files: dict[str, dict[str, bytes]] = {}
    for shard, wanted in sorted(by_shard.items()):
        paths = [layout.shard_tar(data.out, shard)] if shard else layout.shard_tars(data.out)
        for path in paths:
            if path.is_file():
                files.update(_read_members(path, wanted))
    cards = [_card(k, data.identity_of.get(k, ""), files[k], img_dir) for k in picked if k in files]
    by_reason: dict[str, list[str]] = {}
    for key, (_, stage, error) in failed.items():
        by_reason.setdefault(f"{stage}:{error.split(':', 1)[0]}", []).append(key)
    for key in _spread(by_reason, min(MAX_ERROR_CARDS, max(10, max_samples // 4))):
        status, stage, error = failed[key]
        cards.append(Card(key=key, identity=data.identity_of.get(key, ""), status=status, stage=stage, error=error))
    return cards
