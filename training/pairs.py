"""Identity index for reference pairing: which other images of the same person a target may use.

``build_index`` scans each shard's tar headers once (member offsets, so a reference's files can
be read with one ``pread`` while streaming) and joins the packed keys with the manifests
(``source``: identity and file sha256, ``identity``: embedding, ``landmarks``/``pose``: yaw). Without
manifests next to the shards it reads the same facts from the shards' own json and id.npy.

A reference is another key of the same identity that is not the same file (sha256), not a
near-duplicate (embedding cosine <= ``max_cos``) and, when ``min_yaw_gap`` > 0, turned at least that
many degrees away. Up to ``max_candidates`` of them are kept per target. Identities with one
image and targets left without any candidate are counted, not paired. The result is
``<shards>/pairs.parquet``, rebuilt when a shard or the pairing config changes. With
``exclude_leaks``, the samples of identities (and the photos) that ``pipeline audit OUT --against``
found in other output folders are neither targets nor references.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.audit import AUDIT_DIR
from schemas.leaks import LEAKS_FILE
from schemas.shard import META

INDEX_NAME = "pairs.parquet"
INDEX_VERSION = "1"
EMBEDDING = "id.npy"
_META_KEY = b"faceweave.pairs"


@dataclass(frozen=True)
class PairConfig:
    """How references are chosen."""

    max_cos: float = 0.97
    min_yaw_gap: float = 0.0
    max_candidates: int = 16
    seed: int = 0
    exclude_leaks: bool = False
    """Neither pair nor reference the identities and photos that ``pipeline audit OUT --against``
    found in other output folders (``OUT/audit/leaks.parquet``, required then)."""


@dataclass
class PairStats:
    """Counts of one index build."""

    samples: int = 0
    identities: int = 0
    single_image_identities: int = 0
    single_image_samples: int = 0
    no_reference_samples: int = 0
    paired_samples: int = 0
    leak_excluded_samples: int = 0
    source: str = ""  # manifests | shards


def shard_files(shards_dir: Path) -> list[Path]:
    """The shard tars in name order (temp files start with a dot and are skipped)."""
    return sorted(p for p in Path(shards_dir).glob("*.tar") if not p.name.startswith("."))


def scan_members(path: Path) -> list[tuple[str, str, int, int]]:
    """(key, suffix, data offset, size) of every regular member, read from the tar headers only."""
    out = []
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if info.isreg():
                key, _, suffix = info.name.partition(".")
                out.append((key, suffix, info.offset_data, info.size))
    return out


def _signature(shards: list[Path]) -> dict[str, list[int]]:
    return {p.stem: [p.stat().st_size, p.stat().st_mtime_ns] for p in shards}


def _leaks_signature(shards_dir: Path, cfg: PairConfig) -> list[int] | None:
    """Size and mtime of the leaks file the index excluded (a new audit rebuilds the index)."""
    path = shards_dir.parent / AUDIT_DIR / LEAKS_FILE
    if not cfg.exclude_leaks or not path.is_file():
        return None
    return [path.stat().st_size, path.stat().st_mtime_ns]


def _read_member(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _facts_from_manifests(manifests: Path, keys: set[str]) -> dict[str, dict] | None:
    """key -> identity, sha256, embedding, yaw from the stage manifests; None without a source manifest."""
    if not (manifests / "source").is_dir():
        return None
    facts: dict[str, dict] = {}
    for row in pq.read_table(manifests / "source", columns=["key", "status", "identity", "sha256"]).to_pylist():
        if row["key"] in keys:
            facts[row["key"]] = {"identity": row["identity"], "sha256": row["sha256"],
                                 "embedding": None, "yaw": None}
    if (manifests / "identity").is_dir():
        for row in pq.read_table(manifests / "identity", columns=["key", "status", "embedding"]).to_pylist():
            if row["key"] in facts and row["status"] == "ok":
                facts[row["key"]]["embedding"] = row["embedding"]
    for stage in ("pose", "landmarks"):  # landmarks last: its PnP yaw wins where both exist
        if (manifests / stage).is_dir():
            for row in pq.read_table(manifests / stage, columns=["key", "status", "yaw"]).to_pylist():
                if row["key"] in facts and row["status"] == "ok" and row["yaw"] is not None:
                    facts[row["key"]]["yaw"] = row["yaw"]
    return facts


def _facts_from_shards(rows: list[dict], paths: dict[str, Path]) -> dict[str, dict]:
    facts = {}
    for r in rows:
        members = dict(zip(r["members"], zip(r["offsets"], r["sizes"])))
        meta = json.loads(_read_member(paths[r["shard"]], *members[META]))
        emb = None
        if EMBEDDING in members:
            emb = np.load(io.BytesIO(_read_member(paths[r["shard"]], *members[EMBEDDING])))
        yaw = (meta.get("landmarks") or {}).get("yaw", (meta.get("pose") or {}).get("yaw"))
        source = meta.get("source") or {}
        ident = meta.get("identity") if isinstance(meta.get("identity"), str) else source.get("identity")
        facts[r["key"]] = {"identity": ident, "sha256": source.get("sha256"), "embedding": emb, "yaw": yaw}
    return facts


def leaked_keys(out: Path, keys: list[str], identities: list[str]) -> set[str]:
    """Keys of leaked identities and leaked photos, from ``OUT/audit/leaks.parquet``."""
    path = out / AUDIT_DIR / LEAKS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `pipeline audit OUT --against OTHER` before exclude_leaks")
    rows = pq.read_table(path, columns=["level", "identity", "key"]).to_pylist()
    ids = {r["identity"] for r in rows if r["level"] == "identity"}
    leaked = {r["key"] for r in rows if r["level"] == "sample"}
    return {k for k, i in zip(keys, identities) if i in ids or k in leaked}


def _candidates(group: list[int], facts: list[dict], cfg: PairConfig, rng: np.random.Generator) -> list[list[int]]:
    n = len(group)
    valid = ~np.eye(n, dtype=bool)
    embs = [facts[i]["embedding"] for i in group]
    known = np.array([e is not None for e in embs])
    if known.any():
        dim = len(next(e for e in embs if e is not None))
        mat = np.stack([np.asarray(e, np.float32) if e is not None else np.zeros(dim, np.float32) for e in embs])
        near = (mat @ mat.T) > cfg.max_cos
        valid &= ~(near & known[:, None] & known[None, :])
    sha = np.array([facts[i]["sha256"] or f"?{i}" for i in group])
    valid &= sha[:, None] != sha[None, :]
    if cfg.min_yaw_gap > 0:
        yaw = np.array([np.nan if facts[i]["yaw"] is None else facts[i]["yaw"] for i in group], np.float64)
        with np.errstate(invalid="ignore"):
            valid &= np.abs(yaw[:, None] - yaw[None, :]) >= cfg.min_yaw_gap  # unknown yaw never passes
    out = []
    for i in range(n):
        idx = np.flatnonzero(valid[i])
        if len(idx) > cfg.max_candidates:
            idx = np.sort(rng.choice(idx, cfg.max_candidates, replace=False))
        out.append([group[j] for j in idx])
    return out


def build_index(shards_dir: Path, cfg: PairConfig = PairConfig(), manifests_dir: Path | None = None) -> PairStats:
    """Scan the shards, pair every key with same-identity references, write ``pairs.parquet``."""
    shards_dir = Path(shards_dir)
    shards = shard_files(shards_dir)
    if not shards:
        raise FileNotFoundError(f"no shards (*.tar) in {shards_dir}")
    paths = {p.stem: p for p in shards}
    grouped: dict[str, dict] = {}
    for p in shards:
        for key, suffix, off, size in scan_members(p):
            r = grouped.setdefault(key, {"key": key, "shard": p.stem, "members": [], "offsets": [], "sizes": []})
            if r["shard"] != p.stem:
                raise ValueError(f"key {key} appears in shards {r['shard']} and {p.stem}")
            r["members"].append(suffix), r["offsets"].append(off), r["sizes"].append(size)
    rows = [grouped[k] for k in sorted(grouped) if META in grouped[k]["members"]]
    manifests = Path(manifests_dir) if manifests_dir else shards_dir.parent / "manifests"
    facts = _facts_from_manifests(manifests, {r["key"] for r in rows})
    stats = PairStats(samples=len(rows), source="manifests" if facts is not None else "shards")
    if facts is None or any(r["key"] not in facts for r in rows):
        facts = _facts_from_shards(rows, paths)
        stats.source = "shards"
    ordered = [facts[r["key"]] for r in rows]
    excluded: set[str] = set()
    if cfg.exclude_leaks:  # leaked samples stay in the index (the stream looks keys up) but never pair
        excluded = leaked_keys(shards_dir.parent, [r["key"] for r in rows], [str(f["identity"]) for f in ordered])
        stats.leak_excluded_samples = len(excluded)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(ordered):
        if rows[i]["key"] not in excluded:
            groups[str(f["identity"])].append(i)
    rng = np.random.default_rng(cfg.seed)
    candidates: list[list[int]] = [[] for _ in rows]
    stats.identities = len(groups)
    for ident in sorted(groups):
        group = groups[ident]
        if len(group) < 2:
            stats.single_image_identities += 1
            stats.single_image_samples += len(group)
            continue
        for i, cands in zip(group, _candidates(group, ordered, cfg, rng)):
            candidates[i] = cands
            stats.no_reference_samples += not cands
    stats.paired_samples = sum(bool(c) for c in candidates)
    table = pa.table({
        "key": [r["key"] for r in rows], "shard": [r["shard"] for r in rows],
        "identity": [str(f["identity"]) for f in ordered],
        "members": pa.array([r["members"] for r in rows], pa.list_(pa.string())),
        "offsets": pa.array([r["offsets"] for r in rows], pa.list_(pa.int64())),
        "sizes": pa.array([r["sizes"] for r in rows], pa.list_(pa.int64())),
        "candidates": pa.array(candidates, pa.list_(pa.int32())),
    })
    meta = {"version": INDEX_VERSION, "config": asdict(cfg), "signature": _signature(shards), "stats": asdict(stats),
            "leaks": _leaks_signature(shards_dir, cfg)}
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    tmp = shards_dir / f".{INDEX_NAME}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, shards_dir / INDEX_NAME)
    return stats


def _index_meta(path: Path) -> dict | None:
    try:
        return json.loads(pq.read_schema(path).metadata[_META_KEY])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def is_current(shards_dir: Path, cfg: PairConfig) -> bool:
    meta = _index_meta(Path(shards_dir) / INDEX_NAME)
    return bool(meta) and meta["version"] == INDEX_VERSION and meta["config"] == asdict(cfg) \
        and meta["signature"] == _signature(shard_files(Path(shards_dir))) \
        and meta.get("leaks") == _leaks_signature(Path(shards_dir), cfg)


def load_index(shards_dir: Path, cfg: PairConfig = PairConfig(), rebuild: bool = False) -> "PairIndex":
    """The index of ``shards_dir``, built first when missing, stale or ``rebuild``."""
    if rebuild or not is_current(shards_dir, cfg):
        build_index(shards_dir, cfg)
    return PairIndex(Path(shards_dir))


@dataclass
class PairIndex:
    """The loaded index: numpy arrays only, so forked data-loader workers share it cheaply."""

    shards_dir: Path
    stats: PairStats = field(init=False)

    def __post_init__(self) -> None:
        path = self.shards_dir / INDEX_NAME
        meta = _index_meta(path)
        self.stats = PairStats(**meta["stats"])
        t = pq.read_table(path)
        n = t.num_rows
        self.keys = np.array(t["key"].to_pylist())  # sorted by build_index
        shards = t["shard"].to_pylist()
        self.shard_names = sorted(set(shards))
        position = {s: i for i, s in enumerate(self.shard_names)}
        self.shard_of = np.array([position[s] for s in shards], np.int32)
        self.identity = np.array(t["identity"].to_pylist())
        cand = t["candidates"].combine_chunks()
        self.cand_offsets = cand.offsets.to_numpy()
        self.cand_values = cand.values.to_numpy()
        members = t["members"].combine_chunks()
        names = np.array(members.values.to_pylist())
        parents = np.repeat(np.arange(n), np.diff(members.offsets.to_numpy()))
        offs = t["offsets"].combine_chunks().values.to_numpy()
        sizes = t["sizes"].combine_chunks().values.to_numpy()
        self.offsets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for m in np.unique(names):
            sel = names == m
            o, s = np.full(n, -1, np.int64), np.zeros(n, np.int64)
            o[parents[sel]], s[parents[sel]] = offs[sel], sizes[sel]
            self.offsets[str(m)] = (o, s)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}

    def row(self, key: str) -> int:
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or self.keys[i] != key:
            raise KeyError(key)
        return i

    def has(self, suffix: str) -> np.ndarray:
        """Per row: whether the key has member ``suffix``."""
        return self.offsets[suffix][0] >= 0 if suffix in self.offsets else np.zeros(len(self.keys), bool)

    def candidate_rows(self, row: int) -> np.ndarray:
        return self.cand_values[self.cand_offsets[row]:self.cand_offsets[row + 1]]

    def candidates(self, key: str) -> list[str]:
        return [str(self.keys[j]) for j in self.candidate_rows(self.row(key))]

    def usable(self, required: tuple[str, ...], ref_required: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(target ok per row, reference ok per row): targets need ``required`` and one candidate
        that has ``ref_required``."""
        ref_ok = np.ones(len(self.keys), bool)
        for s in ref_required:
            ref_ok &= self.has(s)
        cum = np.concatenate([[0], np.cumsum(ref_ok[self.cand_values])])
        target_ok = (cum[self.cand_offsets[1:]] - cum[self.cand_offsets[:-1]]) > 0
        for s in required:
            target_ok &= self.has(s)
        return target_ok, ref_ok

    def read(self, row: int, suffix: str) -> bytes:
        """One member of the key at ``row``, read with a single pread."""
        off, size = self.offsets[suffix][0][row], self.offsets[suffix][1][row]
        if off < 0:
            raise KeyError(f"{self.keys[row]} has no member {suffix!r}")
        if self._pid != os.getpid():  # a forked worker must not share the parent's descriptors
            self._fds, self._pid = {}, os.getpid()
        shard = int(self.shard_of[row])
        if shard not in self._fds:
            self._fds[shard] = os.open(self.shards_dir / f"{self.shard_names[shard]}.tar", os.O_RDONLY)
        return os.pread(self._fds[shard], int(size), int(off))
