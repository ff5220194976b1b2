"""Identity-purity audit: outliers, duplicates and candidate merges from the identity embeddings.

Reads ``OUT/manifests/source`` (identity, sha256) and ``OUT/manifests/identity`` (unit-length
embeddings) and writes only under ``OUT/audit/`` (columns in ``schemas/audit.py``). The
outlier threshold is the embedding model's same/different-identity cosine from the weights
registry, so the audit of an ArcFace run and of a MobileFaceNet run each use their own.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import layout
from pipeline.core.manifest import validate_columns, write_json, write_table
from schemas import audit as schema
from schemas import leaks as leak_schema

NEAR_DUPLICATE_COSINE = 0.95
IRLS_STEPS = 20
BLOCK = 2048  # centroid rows per block when comparing all identity pairs


@dataclass
class Samples:
    """The audited samples, sorted by key, with their embeddings where the identity stage ran ok."""

    keys: list[str]
    identities: list[str]
    sha256: list[str]
    embeddings: np.ndarray  # (n, dim) float32; rows without an embedding are zero
    has_embedding: np.ndarray  # (n,) bool
    model: str | None


def load_samples(out: Path) -> Samples:
    """Ok source rows joined with their identity-stage embeddings (Arrow to numpy, no Python lists)."""
    if not layout.manifests(out, "source").is_dir():
        what = "does not exist" if not out.exists() else f"has no {Path('manifests', 'source')}/"
        raise FileNotFoundError(f"{out} is not the output folder of a run: it {what} "
                                f"(make one with `pipeline run --out {out} ...`)")
    source = pq.read_table(layout.manifests(out, "source"), columns=["key", "status", "identity", "sha256"])
    source = source.filter(pc.equal(source.column("status"), "ok")).sort_by("key")
    keys = source.column("key").to_pylist()
    ident_dir = layout.manifests(out, "identity")
    if not ident_dir.is_dir():
        raise FileNotFoundError(f"{ident_dir} not found: run the identity stage before the audit")
    ident = pq.read_table(ident_dir, columns=["key", "status", "embedding", "model", "weights_random"])
    ident = ident.filter(pc.and_(pc.equal(ident.column("status"), "ok"),
                                 pc.greater(pc.fill_null(pc.list_value_length(ident.column("embedding")), 0), 0)))
    models = sorted(set(ident.column("model").to_pylist()))
    if len(models) > 1:
        raise ValueError(f"identity manifests mix embedding models {models}: rerun identity with one model")
    if pc.any(pc.fill_null(ident.column("weights_random"), False)).as_py():
        raise ValueError("identity embeddings were made with random weights: an audit of them means nothing")
    lengths = set(pc.list_value_length(ident.column("embedding")).to_pylist())
    if len(lengths) > 1:
        raise ValueError(f"identity embeddings of different sizes {sorted(lengths)}")
    dim = lengths.pop() if lengths else 0
    flat = ident.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = flat.astype(np.float32).reshape(-1, dim) if dim else np.zeros((0, 0), np.float32)
    row_of = {k: i for i, k in enumerate(ident.column("key").to_pylist())}
    emb = np.zeros((len(keys), dim), np.float32)
    has = np.array([k in row_of for k in keys], bool)
    if has.any():
        emb[has] = vectors[[row_of[k] for k in keys if k in row_of]]
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    return Samples(keys, source.column("identity").to_pylist(), source.column("sha256").to_pylist(),
                   emb, has, models[0] if models else None)


def model_threshold(model: str | None, override: float | None = None) -> float:
    """The same-identity cosine of ``model`` from the weights registry (or ``override``)."""
    if override is not None:
        return float(override)
    from stages.models import registry
    import stages.models  # noqa: F401  (registers every family)

    try:
        value = registry.get(model or "").extra.get("same_identity_cosine")
    except KeyError:
        value = None
    if value is None:
        raise ValueError(f"embedding model {model!r} has no same_identity_cosine in the weights registry: "
                         f"pass a threshold explicitly")
    return float(value)


def robust_centroid(x: np.ndarray, steps: int = IRLS_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Unit centroid of unit rows and their weights: iteratively reweighted mean.

    Starts from the normalised coordinate-wise median; each step weights a row by its squared
    (non-negative) cosine to the current centroid, so a minority of other faces hardly moves it.
    """
    c = _unit(np.median(x, axis=0))
    if not c.any():
        c = _unit(x.mean(axis=0))
    w = np.ones(len(x), np.float64)
    for _ in range(steps):
        w = np.clip(x @ c, 0.0, None) ** 2
        if w.sum() <= 0:
            w = np.ones(len(x), np.float64)
        new = _unit(w @ x)
        if np.allclose(new, c, atol=1e-6):
            c = new
            break
        c = new
    return c.astype(np.float32), w


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else np.zeros_like(v)


class _Groups:
    """Union-find over sample indices; the representative is the smallest index (= first key)."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def audit_identity(s: Samples, idx: np.ndarray, threshold: float, near: float) -> dict[str, Any]:
    """Rows of one identity (``idx`` sorted by key) and its robust centroid."""
    n = len(idx)
    groups = _Groups(n)
    first_of_sha: dict[str, int] = {}
    duplicate_of: list[int | None] = [None] * n
    for j, i in enumerate(idx):
        sha = s.sha256[i]
        if sha in first_of_sha:
            duplicate_of[j] = first_of_sha[sha]
            groups.union(first_of_sha[sha], j)
        else:
            first_of_sha[sha] = j
    emb_local = np.flatnonzero(s.has_embedding[idx])
    x = s.embeddings[idx[emb_local]]
    if len(emb_local) > 1:
        sim = x @ x.T
        for a, b in zip(*np.nonzero(np.triu(sim >= near, 1))):
            groups.union(int(emb_local[a]), int(emb_local[b]))
    rep = np.array([groups.find(j) for j in range(n)])
    cos = np.full(n, np.nan, np.float32)
    centroid = None
    # One vote per duplicate group: a photo filed twice must not vouch for itself.
    reps = np.array([j for j in emb_local if rep[j] == j])
    if len(reps) > 0:
        xr = s.embeddings[idx[reps]]
        centroid, w = robust_centroid(xr)
        total = w @ xr
        pos = {int(j): k for k, j in enumerate(reps)}
        for j in emb_local:
            k = pos.get(int(rep[j]))
            if k is None:  # its representative has no embedding: compare with all groups
                loo = total
            else:
                loo = total - w[k] * xr[k]
            if len(reps) > 1 or k is None:
                c = _unit(loo)
                if c.any():
                    cos[j] = float(s.embeddings[idx[j]] @ c)
    outlier = np.nan_to_num(cos, nan=1.0) < threshold
    keys = [s.keys[i] for i in idx]
    rows = []
    for j, i in enumerate(idx):
        rows.append({
            "key": keys[j], "identity": s.identities[i],
            "centroid_cosine": None if np.isnan(cos[j]) else float(cos[j]),
            "outlier": bool(outlier[j]), "threshold": threshold,
            "duplicate_of": keys[duplicate_of[j]] if duplicate_of[j] is not None else None,
            "near_duplicate_of": keys[rep[j]] if rep[j] != j else None,
            "exclude_from_pairing": bool(rep[j] != j or outlier[j]),
            "model": s.model,
        })
    return {"rows": rows, "centroid": centroid, "n": len(emb_local)}


def find_merges(s: Samples, per_id: dict[str, dict], members: dict[str, np.ndarray],
                threshold: float, near: float) -> list[dict[str, Any]]:
    """Identity pairs whose centroids agree, or that share a source file."""
    names = [i for i in sorted(per_id) if per_id[i]["centroid"] is not None]
    candidates: dict[tuple[str, str], float | None] = {}
    if len(names) > 1:
        cents = np.stack([per_id[i]["centroid"] for i in names])
        for lo in range(0, len(names), BLOCK):
            block = cents[lo:lo + BLOCK] @ cents.T
            for a, b in zip(*np.nonzero(block >= threshold)):
                a, b = int(a) + lo, int(b)
                if a < b:
                    candidates[(names[a], names[b])] = float(block[a - lo, b])
    ids_of_sha: dict[str, set[str]] = defaultdict(set)
    for i, sha in enumerate(s.sha256):
        ids_of_sha[sha].add(s.identities[i])
    for sha, ids in ids_of_sha.items():
        ids = sorted(ids)
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                candidates.setdefault((ids[a], ids[b]), None)
    merges = []
    for (a, b), ccos in sorted(candidates.items()):
        ia, ib = members[a], members[b]
        ea, eb = ia[s.has_embedding[ia]], ib[s.has_embedding[ib]]
        sim = s.embeddings[ea] @ s.embeddings[eb].T
        sha_b = Counter(s.sha256[i] for i in ib)
        if ccos is None and per_id[a]["centroid"] is not None and per_id[b]["centroid"] is not None:
            ccos = float(per_id[a]["centroid"] @ per_id[b]["centroid"])
        merges.append({
            "identity_a": a, "identity_b": b, "centroid_cosine": ccos,
            "n_a": len(ea), "n_b": len(eb),
            "pairs_above_threshold": int((sim >= threshold).sum()), "pairs_total": int(sim.size),
            "exact_duplicates": int(sum(sha_b[s.sha256[i]] for i in ia)),
            "near_duplicates": int((sim >= near).sum()),
            "threshold": threshold, "model": s.model,
        })
    return merges


def run_audit(out: Path | str, threshold: float | None = None,
              near_duplicate: float = NEAR_DUPLICATE_COSINE, against: Sequence[Path | str] = ()) -> dict[str, Any]:
    """Audit ``out``; write ``audit/identity.parquet``, ``merges.parquet``, ``summary.json``.

    With ``against`` (other output folders), also the cross-folder leaks (``pipeline/readers/leaks.py``,
    ``audit/leaks.parquet``, summary under ``leaks``); without it, earlier leak results are kept.
    """
    out = Path(out)
    s = load_samples(out)
    thr = model_threshold(s.model, threshold)
    members: dict[str, list[int]] = defaultdict(list)
    for i, ident in enumerate(s.identities):
        members[ident].append(i)
    arrays = {k: np.array(v) for k, v in members.items()}
    per_id = {k: audit_identity(s, v, thr, near_duplicate) for k, v in arrays.items()}
    rows = sorted((r for v in per_id.values() for r in v["rows"]), key=lambda r: r["key"])
    merges = find_merges(s, per_id, arrays, thr, near_duplicate)
    folder = layout.audit(out)
    write_table(validate_columns(rows, schema.SCHEMA), folder / schema.IDENTITY_FILE)
    write_table(validate_columns(merges, schema.MERGE_SCHEMA) if merges else
                schema.MERGE_SCHEMA.empty_table(), folder / schema.MERGES_FILE)
    summary = summarize(rows, merges, s, thr, threshold is not None, near_duplicate)
    if against:
        from pipeline.readers.leaks import run_leaks

        summary["leaks"] = run_leaks(out, against, threshold, near_duplicate, samples=s)
    elif (folder / leak_schema.LEAKS_FILE).is_file() and (folder / schema.SUMMARY_FILE).is_file():
        summary["leaks"] = json.loads((folder / schema.SUMMARY_FILE).read_text()).get("leaks")
    write_json(summary, folder / schema.SUMMARY_FILE)
    return summary


def summarize(rows: list[dict], merges: list[dict], s: Samples, thr: float, overridden: bool,
              near: float) -> dict[str, Any]:
    """Counts, thresholds and where they came from, for ``summary.json``."""
    outliers = Counter(r["identity"] for r in rows if r["outlier"])
    return {
        "model": s.model,
        "threshold": thr,
        "threshold_source": "--threshold" if overridden else f"registry:{s.model}.same_identity_cosine",
        "near_duplicate_cosine": near,
        "samples": len(rows),
        "with_embedding": int(s.has_embedding.sum()),
        "identities": len({r["identity"] for r in rows}),
        "outliers": sum(outliers.values()),
        "duplicates": sum(r["duplicate_of"] is not None for r in rows),
        "near_duplicates": sum(r["near_duplicate_of"] is not None for r in rows),
        "excluded_from_pairing": sum(r["exclude_from_pairing"] for r in rows),
        "candidate_merges": len(merges),
        "identities_with_most_outliers": [{"identity": k, "outliers": v} for k, v in outliers.most_common(10)],
    }


def read_audit(out: Path | str) -> pa.Table | None:
    """``OUT/audit/identity.parquet`` if the audit ran, else None."""
    path = Path(out) / schema.AUDIT_DIR / schema.IDENTITY_FILE
    return pq.read_table(path) if path.is_file() else None
