"""``pipeline export OUT --format F --to DIR``: trainer-specific layouts built from an output folder.

Every format reads the packed shards (``OUT/shards/*.tar``: the annotated image, its json and
the stages' files) for the samples that ``--where`` selects through the ``samples`` SQL view,
and writes only under DIR. OUT is never modified. Image files are hard-linked from the source
dataset when the shard holds the source file's exact bytes and the filesystem allows it
(``--copy`` forces copies); images that exist only inside a shard tar (aligned or restored
crops) are extracted, since a tar member cannot be hard-linked. DIR gets ``export.json``
(format, selection, counts, warnings) last, as the marker of a finished export.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline import layout
from schemas.shard import IMAGE, META, meta_section

FORMATS: dict[str, str] = {
    "hf": "pipeline.readers.export.hf",
    "dense-face": "pipeline.readers.export.dense_face",
    "pairs": "pipeline.readers.export.pairs",
    "f2d": "pipeline.readers.export.f2d",
    "ip-adapter-faceid": "pipeline.readers.export.ip_adapter",
    "instantid": "pipeline.readers.export.instantid",
}
FALLBACK_CAPTION = "a photo of a person"
MARKER = "export.json"


@dataclass
class Sample:
    """One packed sample: its shard members by suffix and its decoded json."""

    key: str
    identity: str
    meta: dict[str, Any]
    files: dict[str, bytes]
    source_file: Path | None = None  # the input file, when the shard's jpg is its exact bytes

    def stage(self, name: str) -> dict[str, Any]:
        value = self.meta.get(meta_section(name))
        return value if isinstance(value, dict) else {}


@dataclass
class Writer:
    """Writes files under DIR, hard-linking source files unless ``copy``; counts what it did."""

    root: Path
    copy: bool = False
    counts: dict[str, int] = field(default_factory=lambda: {"linked": 0, "extracted": 0, "written": 0})

    def path(self, rel: str) -> Path:
        dst = self.root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        return dst

    def bytes(self, rel: str, data: bytes) -> Path:
        dst = self.path(rel)
        dst.write_bytes(data)
        self.counts["written"] += 1
        return dst

    def image(self, rel: str, sample: Sample) -> Path:
        """The sample's annotated image (``<key>.jpg`` of the shard) at ``rel``."""
        dst = self.path(rel)
        if not self.copy and sample.source_file is not None:
            try:
                os.link(sample.source_file, dst)
                self.counts["linked"] += 1
                return dst
            except OSError:
                pass  # another filesystem, or links not allowed: fall back to a copy
        dst.write_bytes(sample.files[IMAGE])
        self.counts["extracted"] += 1
        return dst

    def json(self, rel: str, obj: Any, indent: int | None = 1) -> Path:
        return self.bytes(rel, (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode())

    def npy(self, rel: str, array: np.ndarray) -> Path:
        buf = io.BytesIO()
        np.save(buf, array)
        return self.bytes(rel, buf.getvalue())

    def torch(self, rel: str, obj: Any) -> Path:
        import torch

        buf = io.BytesIO()
        torch.save(obj, buf)
        return self.bytes(rel, buf.getvalue())


@dataclass
class Context:
    """What an exporter gets: the folders, the selection and where to report warnings."""

    out: Path
    to: Path
    keys: list[str]  # selected by --where (packed or not), sorted
    identity: dict[str, str]  # key -> identity of the selected keys
    writer: Writer
    audit: dict[str, dict[str, Any]] | None
    warnings: list[str] = field(default_factory=list)
    where: str | None = None  # the --where condition the keys came from

    def samples(self, keys: set[str] | None = None) -> Iterator[Sample]:
        """Selected packed samples (or those of ``keys``), in key order."""
        return iter_samples(self.out, set(self.keys) if keys is None else keys)

    def packed(self) -> list[str]:
        """Selected keys that are in a shard (ok in every stage), read from the tar headers."""
        selected = set(self.keys)
        return sorted(k for k in packed_keys(self.out) if k in selected)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def shard_paths(out: Path) -> list[Path]:
    return layout.shard_tars(out)


def packed_keys(out: Path) -> set[str]:
    keys = set()
    for path in shard_paths(out):
        with tarfile.open(path, "r:") as tar:
            keys.update(m.name.partition(".")[0] for m in tar if m.isreg())
    return keys


def _input_root(out: Path) -> Path | None:
    try:
        root = json.loads(layout.plan_info(out).read_text()).get("input")
    except (OSError, ValueError):
        return None
    return Path(root) if root else None


def iter_samples(out: Path, keys: set[str] | None = None) -> Iterator[Sample]:
    """Packed samples in shard order (sorted keys), restricted to ``keys`` when given."""
    root = _input_root(out)
    for path in shard_paths(out):
        with tarfile.open(path, "r:") as tar:
            group: dict[str, bytes] = {}
            current = None
            for info in tar:
                if not info.isreg():
                    continue
                key, _, suffix = info.name.partition(".")
                if key != current:
                    if current is not None and group:
                        yield _sample(current, group, root)
                    current, group = key, {}
                if keys is None or key in keys:
                    group[suffix] = tar.extractfile(info).read()
            if current is not None and group:
                yield _sample(current, group, root)


def _sample(key: str, files: dict[str, bytes], root: Path | None) -> Sample:
    meta = json.loads(files[META])
    return Sample(key, identity_label(meta), meta, files, _source_file(meta, files, root))


def identity_label(meta: dict[str, Any]) -> str:
    """The sample's identity: the json's top-level ``identity``, or the source's copy of it
    when the identity stage's columns took that name."""
    label = meta.get("identity")
    return label if isinstance(label, str) else (meta.get("source") or {})["identity"]


def _source_file(meta: dict, files: dict[str, bytes], root: Path | None) -> Path | None:
    """The input file whose bytes the shard's image is, if it still is that file."""
    src = meta.get("source") or {}
    if root is None or "#" in (src.get("location") or "") or not src.get("location"):
        return None
    if hashlib.sha256(files[IMAGE]).hexdigest() != src.get("sha256"):
        return None  # a crop or a re-encoded image: only the tar has it
    path = root / src["location"]
    try:
        same = path.stat().st_size == len(files[IMAGE]) and path.read_bytes() == files[IMAGE]
    except OSError:
        return None
    return path if same else None  # the input changed since the run: use the shard's bytes


def caption_of(sample: Sample) -> tuple[str, bool]:
    """The best kept caption and True, or the fallback caption and False."""
    captions = sample.stage("caption").get("captions") or []
    return (captions[0], True) if captions else (FALLBACK_CAPTION, False)


def embedding_of(sample: Sample) -> np.ndarray | None:
    """The identity embedding (float32, unit length) or None without the identity stage."""
    if "id.npy" in sample.files:
        return np.load(io.BytesIO(sample.files["id.npy"])).astype(np.float32)
    emb = sample.stage("identity").get("embedding")
    return np.asarray(emb, np.float32) if emb else None


def face_mask_of(sample: Sample) -> np.ndarray | None:
    """uint8 0/255 face mask in the image's pixels: parsing's facemask.png, else the pseudo mask."""
    from PIL import Image

    if "facemask.png" in sample.files:
        return np.asarray(Image.open(io.BytesIO(sample.files["facemask.png"])).convert("L"))
    if "mask.png" in sample.files:
        labels = np.asarray(Image.open(io.BytesIO(sample.files["mask.png"])))
        return np.where(labels > 0, 255, 0).astype(np.uint8)
    return None


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def points5_in_image(sample: Sample) -> np.ndarray | None:
    """(5, 2) detector points in the pixels of the exported image (the crop when detect ran)."""
    det = sample.stage("detect")
    pts = det.get("points5_crop") if det.get("points5_crop") else det.get("points5")
    return np.asarray(pts, np.float64).reshape(5, 2) if pts else None


def box_in_image(sample: Sample) -> list[float] | None:
    """The detector box (x1, y1, x2, y2) in the exported image's pixels."""
    det = sample.stage("detect")
    if not det.get("box"):
        return None
    box = np.asarray(det["box"], np.float64)
    if not det.get("affine"):
        return box.tolist()
    m = np.asarray(det["affine"], np.float64).reshape(2, 3)
    corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]])
    mapped = corners @ m[:, :2].T + m[:, 2]
    return [*mapped.min(0).tolist(), *mapped.max(0).tolist()]


def load_audit(out: Path) -> dict[str, dict[str, Any]] | None:
    from pipeline.readers.audit import read_audit

    table = read_audit(out)
    return None if table is None else {r["key"]: r for r in table.to_pylist()}


def check_target(out: Path, to: Path) -> None:
    """DIR must be outside OUT and empty (or absent)."""
    out_r, to_r = out.resolve(), to.resolve()
    if to_r == out_r or out_r in to_r.parents:
        raise ValueError(f"--to {to} is inside {out}: exports never write into the output folder")
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise ValueError(f"--to {to} exists and is not an empty folder")


def export(out: Path | str, fmt: str, to: Path | str, where: str | None = None,
           copy: bool = False, exclude_leaks: bool = False) -> dict[str, Any]:
    """Export the samples of ``out`` matching ``where`` to ``to`` in format ``fmt``
    (without the identities and photos ``pipeline audit --against`` found elsewhere, if ``exclude_leaks``)."""
    from pipeline.readers.sql import keys_where

    out, to = Path(out), Path(to)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    if not shard_paths(out):
        raise FileNotFoundError(f"{out}/shards has no shard tars: run the pipeline (pack) first")
    check_target(out, to)
    condition = where
    if exclude_leaks:
        from pipeline.readers.leaks import exclude_condition, leaks_path

        if not leaks_path(out).is_file():
            raise FileNotFoundError(f"{leaks_path(out)} not found: run `pipeline audit OUT --against OTHER` first")
        condition = f"({where}) AND {exclude_condition()}" if where and where.strip() else exclude_condition()
    selected = keys_where(out, condition)
    keys = selected.column("key").to_pylist()
    ctx = Context(out, to, keys, dict(zip(keys, selected.column("identity").to_pylist())),
                  Writer(to, copy), load_audit(out), where=where)
    module = importlib.import_module(FORMATS[fmt])
    # A format that cannot be used as the run stands refuses here, before DIR is created.
    checked: dict[str, Any] = module.check(ctx) if hasattr(module, "check") else {}
    to.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {**checked, **module.export(ctx)}
    summary = {"format": fmt, "out": str(out.resolve()), "where": where or "", "exclude_leaks": exclude_leaks,
               "copy": copy,
               "selected": len(keys), **result, "files": ctx.writer.counts, "warnings": ctx.warnings}
    ctx.writer.json(MARKER, summary)
    return summary
