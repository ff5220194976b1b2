"""Runner overhead and memory as the work grows: 1k -> 10k -> 100k samples, a no-op stage.

    python bench/scaling.py [--sizes 1000,10000,100000] [--executor local]

Each size runs in a fresh process (so peak RSS is its own): tiny real JPEGs (a 24x24 crop of a
real photo, re-encoded) in CASIA-like folders, stages: source step, ``noop`` (no image decode),
pack. Reports samples/s end to end and of the no-op stage step alone, and peak RSS.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FACE = ROOT.parent / "shared" / "faces" / "lfw10" / "Colin_Powell" / "Colin_Powell_0001.jpg"


def make_tree(root: Path, n: int) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(FACE).convert("RGB").crop((113, 113, 137, 137)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    for i in range(n):
        folder = root / f"{i // 100:07d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        (folder / f"{i % 100:03d}.jpg").write_bytes(data)


def one(n: int, executor: str) -> dict:
    os.environ["FACEWEAVE_PLUGINS"] = "bench.noop_stage"
    from pipeline.config import resolve
    from pipeline.core.runner import run

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        make_tree(tree, n)
        cfg = resolve(flags={"source": "casia-webface", "input": str(tree), "out": str(Path(tmp) / "out"),
                             "stages": "noop", "executor": executor, "shard_size": 1000})
        t0 = time.perf_counter()
        run(cfg, quiet=True)
        total = time.perf_counter() - t0
    return {"n": n, "seconds": round(total, 2), "per_s": round(n / total, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--executor", default="local")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.executor)))
        return
    rows = []
    for n in map(int, args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--executor", args.executor],
                              capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    base = rows[0]
    body = ("Stages: source step (read, sha256, decode check), `noop` (no image), pack; shards of 1000; "
            f"executor `{args.executor}`; each size in a fresh process.\n\n"
            "| samples | seconds | samples/s end to end | peak RSS MiB | time / linear | RSS vs smallest |\n"
            "|---|---|---|---|---|---|\n")
    for r in rows:
        linear = r["seconds"] / (base["seconds"] * r["n"] / base["n"])
        body += (f"| {r['n']} | {r['seconds']} | {r['per_s']} | {r['peak_rss_mib']} | "
                 f"{linear:.2f} | {r['peak_rss_mib'] / base['peak_rss_mib']:.2f} |\n")
    print(body)
    if not args.no_write:
        from bench.report import write_section

        write_section("Runner scaling (no-op stage)", body, f"python bench/scaling.py --sizes {args.sizes}")


if __name__ == "__main__":
    main()
