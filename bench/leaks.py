"""Leak audit at scale: 100k OUT x 10k EVAL synthetic unit embeddings (``pipeline/readers/leaks.py``).

Synthetic people are random unit vectors; a photo is its person plus unit noise (same-person
cosine about 0.5, different people about 0 +- 1/sqrt(dim)). EVAL shares ``--shared`` people with
OUT (other photos), holds ``--copies`` exact copies of OUT files and as many near-duplicates
(a copy plus a little noise). The script times ``find_leaks`` (centroids, identity products, the
blocked photo scan) and checks that exactly the planted leaks come back.

    python bench/leaks.py [--out-samples 100000 --eval-samples 10000 --dim 512] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from pipeline.readers import leaks
from pipeline.readers.audit import Samples


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def folder(rng: np.random.Generator, people: np.ndarray, person_ids: np.ndarray, per: int,
           prefix: str, noise: float) -> Samples:
    ids = np.repeat(person_ids, per)
    emb = _unit(people[ids] + noise * _unit(rng.normal(size=(len(ids), people.shape[1])).astype(np.float32)))
    names = [f"{prefix}{i:06d}" for i in ids]
    keys = [f"{n}_{j:03d}" for n, j in zip(names, np.tile(np.arange(per), len(person_ids)))]
    return Samples(keys, names, [f"{prefix}-{k}" for k in keys], emb, np.ones(len(ids), bool), "synthetic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-samples", type=int, default=100_000)
    ap.add_argument("--eval-samples", type=int, default=10_000)
    ap.add_argument("--per-identity", type=int, default=10)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shared", type=int, default=50)
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--threshold", type=float, default=0.30)
    ap.add_argument("--near", type=float, default=0.95)
    ap.add_argument("--block", type=int, default=leaks.BLOCK)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n_out, n_eval = args.out_samples // args.per_identity, args.eval_samples // args.per_identity
    people = _unit(rng.normal(size=(n_out + n_eval - args.shared, args.dim)).astype(np.float32))
    t0 = time.perf_counter()
    a = folder(rng, people, np.arange(n_out), args.per_identity, "o", 1.0)
    eval_people = np.r_[np.arange(args.shared), np.arange(n_out, n_out + n_eval - args.shared)]
    b = folder(rng, people, eval_people, args.per_identity, "e", 1.0)
    # plant copies (same sha256 and embedding) and near-duplicates in EVAL photos of unshared people
    src = rng.choice(np.arange(args.shared * args.per_identity, len(a.keys)), 2 * args.copies, replace=False)
    dst = rng.choice(np.arange(args.shared * args.per_identity, len(b.keys)), 2 * args.copies, replace=False)
    for s, d in zip(src[:args.copies], dst[:args.copies]):
        b.sha256[d], b.embeddings[d] = a.sha256[s], a.embeddings[s]
    b.embeddings[dst[args.copies:]] = _unit(a.embeddings[src[args.copies:]]
                                            + 0.1 * _unit(rng.normal(size=(args.copies, args.dim))))
    made = time.perf_counter() - t0

    timings: dict[str, tuple[float, float]] = {}  # step -> (wall s, CPU s of this process)
    load = os.getloadavg()[0]

    def timed(step: str, fn, *fn_args):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(*fn_args)
        timings[step] = (time.perf_counter() - wall, time.process_time() - cpu)
        return result

    names_a, ca, _, code_a = timed("centroids of OUT (IRLS)", leaks.centroids, a)
    names_b, cb, _, code_b = timed("centroids of EVAL (IRLS)", leaks.centroids, b)
    timed("identity products", leaks.identity_matches, ca, cb, args.threshold, args.block)
    timed("photo scan (blocked products, no pair counts)", leaks.sample_scan, a.embeddings, b.embeddings,
          code_a, code_b, np.zeros(0, np.int64), max(len(names_b), 1), args.threshold, args.block)
    rows = timed("find_leaks end to end", leaks.find_leaks, a, b, "EVAL", args.threshold, args.near, args.block)
    total, total_cpu = timings["find_leaks end to end"]

    ident = {(r["identity"], r["other_identity"]) for r in rows if r["level"] == "identity"}
    want_ident = {(f"o{i:06d}", f"e{i:06d}") for i in range(args.shared)}
    exact = {(r["key"], r["other_key"]) for r in rows if r["kind"] == "exact"}
    near = {(r["key"], r["other_key"]) for r in rows if r["kind"] == "near"}
    want_exact = {(a.keys[s], b.keys[d]) for s, d in zip(src[:args.copies], dst[:args.copies])}
    want_near = {(a.keys[s], b.keys[d]) for s, d in zip(src[args.copies:], dst[args.copies:])}
    pairs = len(a.keys) * len(b.keys)
    lines = [
        f"{len(a.keys):,} OUT x {len(b.keys):,} EVAL synthetic unit embeddings, dim {args.dim}, "
        f"{len(names_a):,} x {len(names_b):,} identities ({args.per_identity} photos each), float32, "
        f"block {args.block} rows; threshold {args.threshold}, near-duplicate cosine {args.near}. "
        f"Planted: {args.shared} shared people, {args.copies} exact copies, {args.copies} near-duplicates "
        f"(made in {made:.1f} s).",
        "",
        "| step | wall s | CPU s |",
        "|---|---|---|",
        *[f"| {k} | {w:.2f} | {c:.2f} |" for k, (w, c) in timings.items()],
        "",
        f"Load average {load:.1f} on {os.cpu_count()} cores when it started (a shared machine: wall time "
        f"includes waiting for the CPU; CPU s is this process's own time, summed over its BLAS threads).",
        "",
        f"{pairs / 1e9:.2f} G photo pairs scored in {total:.1f} s ({pairs / total / 1e6:.0f} M pairs/s, "
        f"{2 * pairs * args.dim / total / 1e9:.0f} GFLOP/s in the products). Found: {len(ident)} identity pairs "
        f"({len(ident & want_ident)} planted, {len(ident - want_ident)} false), {len(exact)} exact "
        f"({len(exact & want_exact)} planted), {len(near)} near ({len(near & want_near)} planted, "
        f"{len(near - want_near)} false).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        from bench.report import write_section

        write_section("Leak audit (100k x 10k embeddings)", body,
                      "python bench/leaks.py")


if __name__ == "__main__":
    main()
