"""Identity leakage between output folders: ``pipeline audit OUT --against OTHER [--against ...]``.

Two questions, answered with blocked matrix products over the identity embeddings (no Python
loop over pairs of samples or identities):

- which identities of OUT are also people of OTHER: robust centroid (the audit's IRLS,
  vectorised over all identities at once) cosine >= the embedding model's same-identity cosine
  from the weights registry, with the fraction of photo pairs across the two above it;
- which samples of OUT are the same file (source sha256, a hash join) or a near-duplicate
  (embedding cosine >= the near-duplicate cosine) of a sample of OTHER.

Both folders must be embedded by the same model. Rows go to ``OUT/audit/leaks.parquet``
(columns in ``schemas/leaks.py``); OTHER is only read. ``exclude_condition`` is the SQL that
``pipeline export --exclude-leaks`` adds to ``--where``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from pipeline import layout
from pipeline.readers.audit import Samples, load_samples, model_threshold
from pipeline.core.manifest import validate_columns, write_table
from schemas import leaks as schema

BLOCK = 4096  # rows of OUT per matrix-product block
COLUMNS = 4  # x BLOCK rows of OTHER per block: 4096 x 16384 float32 scores (256 MiB) at most at a time
IRLS_STEPS = 20


def leaks_path(out: Path | str) -> Path:
    return layout.audit(out) / schema.LEAKS_FILE


def centroids(s: Samples, steps: int = IRLS_STEPS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(identity names, unit centroids, embedded samples per identity, identity code per embedded row).

    The IRLS of ``pipeline.readers.audit.robust_centroid`` run for every identity at once: start at the
    normalised coordinate-wise median, then weight each photo by its squared non-negative cosine
    to its identity's current centroid, so a minority of other faces hardly moves it.
    """
    rows = np.flatnonzero(s.has_embedding)
    names, code = np.unique(np.asarray(s.identities, dtype=object)[rows].astype(str), return_inverse=True)
    x = s.embeddings[rows]
    order = np.argsort(code, kind="stable")
    xs, cs = x[order], code[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]]) if len(cs) else np.zeros(0, int)
    counts = np.diff(np.r_[starts, len(cs)])
    # the median start is one call per identity (not per pair): cheap next to the products
    c = np.stack([np.median(g, axis=0) for g in np.split(xs, starts[1:])]) if len(cs) else x[:0]
    c = _unit_rows(c)
    empty = ~c.any(axis=1)
    if empty.any():
        c[empty] = _unit_rows(np.add.reduceat(xs, starts)[empty])
    for _ in range(steps):
        w = np.clip(np.einsum("ij,ij->i", xs, c[cs]), 0.0, None) ** 2
        total = np.add.reduceat(w, starts)
        w = np.where(total[cs] > 0, w, 1.0)  # an identity with no positive weight: plain mean
        new = _unit_rows(np.add.reduceat(xs * w[:, None], starts))
        done = np.allclose(new, c, atol=1e-6)
        c = new
        if done:
            break
    return names, c.astype(np.float32), counts, code


def _unit_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def blocks(x: np.ndarray, y: np.ndarray, block: int = BLOCK) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, first column, ``x[rows] @ y[cols].T``) over the whole product, one block at a time."""
    for lo in range(0, len(x), block):
        for co in range(0, len(y), block * COLUMNS):
            yield lo, co, x[lo:lo + block] @ y[co:co + block * COLUMNS].T


def identity_matches(ca: np.ndarray, cb: np.ndarray, threshold: float,
                     block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows of ``ca``, rows of ``cb``, cosine) of centroid pairs with cosine >= ``threshold``, row-major."""
    ia, ib, cos = [], [], []
    for lo, co, sim in blocks(ca, cb, block):
        a, b = np.nonzero(sim >= threshold)
        ia.append(a + lo), ib.append(b + co), cos.append(sim[a, b])
    if not ia:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32)
    return np.concatenate(ia), np.concatenate(ib), np.concatenate(cos)


def sample_scan(xa: np.ndarray, xb: np.ndarray, code_a: np.ndarray, code_b: np.ndarray,
                pair_codes: np.ndarray, n_ids_b: int, threshold: float,
                block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass of blocked products over every photo pair of the two folders.

    Returns, per row of ``xa``, its best match in ``xb`` (index, cosine), and for each entry of
    ``pair_codes`` (sorted ``identity_a * n_ids_b + identity_b`` codes of matched identities)
    the number of photo pairs across them with cosine >= ``threshold``.
    """
    best = np.full(len(xa), -1, np.int64)
    best_cos = np.full(len(xa), -np.inf, np.float32)
    above = np.zeros(len(pair_codes), np.int64)
    if not len(xa) or not len(xb):
        return best, best_cos, above
    ids_a, ids_b = np.unique(pair_codes // n_ids_b), np.unique(pair_codes % n_ids_b)
    wanted_a, wanted_b = np.isin(code_a, ids_a), np.isin(code_b, ids_b)
    for lo, co, sim in blocks(xa, xb, block):
        j = sim.argmax(axis=1)
        top = sim[np.arange(len(j)), j]
        better = top > best_cos[lo:lo + len(j)]  # strict: the first column block wins ties
        best[lo:lo + len(j)][better], best_cos[lo:lo + len(j)][better] = j[better] + co, top[better]
        rows = np.flatnonzero(wanted_a[lo:lo + len(j)])
        cols = np.flatnonzero(wanted_b[co:co + sim.shape[1]])
        if not len(rows) or not len(cols):
            continue
        r, c = np.nonzero(sim[np.ix_(rows, cols)] >= threshold)
        codes = code_a[lo + rows[r]] * n_ids_b + code_b[co + cols[c]]
        pos = np.searchsorted(pair_codes, codes)
        hit = (pos < len(pair_codes)) & (pair_codes[np.minimum(pos, len(pair_codes) - 1)] == codes)
        above += np.bincount(pos[hit], minlength=len(pair_codes))
    return best, best_cos, above


def exact_matches(a: Samples, b: Samples) -> tuple[np.ndarray, np.ndarray]:
    """(sample index in a, sample index in b) of every pair with the same source sha256 (hash join)."""
    ta = pa.table({"sha": pa.array(a.sha256, pa.string()), "i": np.arange(len(a.keys))})
    tb = pa.table({"sha": pa.array(b.sha256, pa.string()), "j": np.arange(len(b.keys))})
    joined = ta.join(tb, "sha", join_type="inner").sort_by([("i", "ascending"), ("j", "ascending")])
    return joined.column("i").to_numpy(), joined.column("j").to_numpy()


def find_leaks(a: Samples, b: Samples, against: str, threshold: float, near: float,
               block: int = BLOCK) -> list[dict[str, Any]]:
    """Leak rows (``schemas/leaks.py``) of folder ``a`` against folder ``b``."""
    check_same_model(a, b, against)
    names_a, ca, n_a, code_a = centroids(a)
    names_b, cb, n_b, code_b = centroids(b)
    ia, ib, ccos = identity_matches(ca, cb, threshold, block)
    pair_codes = ia.astype(np.int64) * max(len(names_b), 1) + ib
    order = np.argsort(pair_codes)
    ia, ib, ccos, pair_codes = ia[order], ib[order], ccos[order], pair_codes[order]
    rows_a, rows_b = np.flatnonzero(a.has_embedding), np.flatnonzero(b.has_embedding)
    best, best_cos, above = sample_scan(a.embeddings[rows_a], b.embeddings[rows_b], code_a, code_b,
                                        pair_codes, max(len(names_b), 1), threshold, block)
    base = {"against": against, "threshold": threshold, "near_threshold": near, "model": a.model}
    out = []
    for x, y, cos, hits in zip(ia.tolist(), ib.tolist(), ccos.tolist(), above.tolist()):
        total = int(n_a[x]) * int(n_b[y])
        out.append({**base, "level": "identity", "kind": "identity", "identity": str(names_a[x]), "key": None,
                    "other_identity": str(names_b[y]), "other_key": None, "cosine": cos,
                    "n": int(n_a[x]), "other_n": int(n_b[y]), "pairs_above_threshold": hits,
                    "pairs_total": total, "pair_fraction": hits / total if total else None})
    ei, ej = exact_matches(a, b)
    for i, j in zip(ei.tolist(), ej.tolist()):
        both = a.has_embedding[i] and b.has_embedding[j]
        cos = float(a.embeddings[i] @ b.embeddings[j]) if both else None
        out.append(_sample_row(base, a, b, i, j, "exact", cos))
    exact = set(ei.tolist())
    for r in np.flatnonzero(best_cos >= near).tolist():
        i, j = int(rows_a[r]), int(rows_b[best[r]])
        if i not in exact:
            out.append(_sample_row(base, a, b, i, j, "near", float(best_cos[r])))
    return out


def _sample_row(base: dict, a: Samples, b: Samples, i: int, j: int, kind: str, cos: float | None) -> dict:
    return {**base, "level": "sample", "kind": kind, "identity": a.identities[i], "key": a.keys[i],
            "other_identity": b.identities[j], "other_key": b.keys[j], "cosine": cos, "n": None,
            "other_n": None, "pairs_above_threshold": None, "pairs_total": None, "pair_fraction": None}


def check_same_model(a: Samples, b: Samples, against: str) -> None:
    """Embeddings of two models live in different spaces: refuse to compare them."""
    if a.model is None or b.model is None:
        raise ValueError(f"{against if b.model is None else 'OUT'} has no identity embeddings: "
                         f"run the identity stage there first")
    if a.model != b.model or a.embeddings.shape[1] != b.embeddings.shape[1]:
        raise ValueError(f"OUT was embedded with {a.model!r}, {against} with {b.model!r}: the leak audit needs "
                         f"one embedding model (rerun the identity stage of one with --set identity.model=...)")


def run_leaks(out: Path | str, against: Iterable[Path | str], threshold: float | None = None,
              near: float = 0.95, samples: Samples | None = None) -> dict[str, Any]:
    """Compare ``out`` with every folder of ``against``; write ``audit/leaks.parquet``; a summary."""
    out = Path(out)
    s = samples if samples is not None else load_samples(out)
    thr = model_threshold(s.model, threshold)
    rows: list[dict[str, Any]] = []
    per_folder = []
    for other in against:
        other = Path(other)
        if other.resolve() == out.resolve():
            raise ValueError(f"--against {other} is OUT itself")
        found = find_leaks(s, load_samples(other), str(other.resolve()), thr, near)
        rows += found
        per_folder.append(summarize(found, str(other.resolve())))
    write_table(validate_columns(rows, schema.SCHEMA) if rows else schema.SCHEMA.empty_table(), leaks_path(out))
    total = summarize(rows, "all")
    return {**total, "against": per_folder, "threshold": thr, "near_threshold": near, "model": s.model,
            "excluded_samples": len(excluded_keys(s.keys, s.identities, rows))}


def summarize(rows: list[dict[str, Any]], against: str) -> dict[str, Any]:
    """Counts of one folder's (or all) leak rows."""
    ident = [r for r in rows if r["level"] == "identity"]
    return {"folder": against, "identities": len({r["identity"] for r in ident}), "identity_pairs": len(ident),
            "exact_duplicates": sum(r["kind"] == "exact" for r in rows),
            "near_duplicates": sum(r["kind"] == "near" for r in rows)}


def excluded_keys(keys: list[str], identities: list[str], rows: list[dict[str, Any]]) -> set[str]:
    """Keys that ``--exclude-leaks`` drops: every sample of a leaked identity, and leaked samples."""
    leaked_ids = {r["identity"] for r in rows if r["level"] == "identity"}
    leaked = {r["key"] for r in rows if r["level"] == "sample"}
    return {k for k, i in zip(keys, identities) if i in leaked_ids or k in leaked}


def exclude_condition(view: str = "leaks") -> str:
    """SQL over the ``samples`` view: true for samples that ``--exclude-leaks`` keeps.

    The null filters matter: ``x NOT IN (subquery with a NULL)`` is never true.
    """
    return (f'("identity" NOT IN (SELECT "identity" FROM {view} WHERE level = \'identity\') AND '
            f'"key" NOT IN (SELECT "key" FROM {view} WHERE level = \'sample\' AND "key" IS NOT NULL))')
