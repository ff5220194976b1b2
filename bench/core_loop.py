"""The core loop's overhead on a CPU machine: wall time vs the stages' own compute, per-part CPU
cost outside model calls, the no-op rerun and the disk an output folder takes.

    python bench/core_loop.py [--n 300] [--big 1200] [--repeat 3] [--skip-ray]

1. lite preset on N LFW-sized (250 px) photos from ../shared/faces, default executor and Ray:
   wall time against (sum of per-sample stage compute / cores), the issue's ratio (target ≤ 1.25);
2. CPU time per sample outside model calls (read, sha256, decode, JPEG quality, frame JPEG
   encode + decode, tar member, manifest row) at 250 px and 1024 px (targets ≤ 50 ms and ≤ 120 ms);
3. a no-op rerun of the same command (target < 5 s, one line, no file rewritten);
4. OUT size / shards size (target ≤ 1.3).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import write_section  # noqa: E402

FACES = ROOT.parent / "shared" / "faces"
NOTE = ("On 2 cores the default (`processes`) is the fastest of the three: one one-thread worker process per core, "
        "or one per shard in a run of under two rounds (3 shards of 100 on 2 cores: three workers share the cores "
        "from the start, instead of the third shard running alone on two threads at the end, which torch used at "
        "~70%); thread counts are fixed by the plan so annotations never depend on scheduling. The ratio is met at "
        "1200 photos and not at 300, where start-up decides it: the start-up floor alone (the ratio of a run that "
        "would be perfect after its first sample) reads 1.21-1.30 across days, above the target on the days this VM "
        "computes fastest (today's stage CPU is about half of the slowest day's; the start-up shrank less). The "
        "first sample starts ~2.9-5.5 s after the command, by the day: the CLI starts the fork server ~0.25 s in "
        "(as soon as the flags say a fresh run on worker processes, before the config is read), spawning it takes "
        "~0.3 s and its imports ~2.4-4 s, one after another in one process (torch 1.7-2.8 s of them, mediapipe "
        "0.3-0.7 s, numpy and pyarrow ~0.4 s, the pipeline's own modules ~0.4-0.6 s); no lite stage can start "
        "before torch, since detect, the first, runs on it. After the first sample: ~6-8 ms/sample of CPU outside "
        "model calls (table below), packing (~0.25 s per 100-sample shard, the last one in the tail) and the "
        "exit. A torch-free lite path (see the ONNX section: those nets 2.0-2.6x faster on onnxruntime, 0.33 s to "
        "import) would shorten the wall time, not this ratio: it shrinks the compute the ratio divides by along "
        "with the start-up. Earlier changes to start-up (ratio 1.53 -> 1.37-1.40 on one VM day): the fork server "
        "answers pyarrow's pandas probe once, with no pandas (it cost each worker 1.0-1.5 s); mediapipe's "
        "matplotlib.pyplot and sounddevice imports are deferred until used (0.6-0.9 s and ~0.2 s of the server's "
        "imports); the server imports what `pipeline.cli` imports, which multiprocessing re-runs in each worker "
        "(~0.5 s); and it starts before the config import (~0.3 s). Each shard's md5 for the wids index is hashed "
        "while pack writes it, so the driver no longer rereads every shard at the end. This VM's speed drifts (the "
        "same 300 photos' stage CPU read 23-49 s across days) and identical runs vary ~±0.5 s, so compare ratios, "
        "not seconds, across days. Ray's start-up and serialisation cost more than they gain on one machine; the "
        "in-process run's torch threads scale ~1.4x on 2 cores.")


def build_tree(root: Path, n: int, side: int) -> int:
    """N real photos resized to ``side`` (CASIA-like folders), distinct files by a 1-px crop shift."""
    photos = sorted(p for p in FACES.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for i in range(n):
        src = Image.open(photos[i % len(photos)]).convert("RGB")
        shift = i // len(photos)
        w, h = src.size
        im = src.crop((shift, shift, w - shift, h - shift)).resize((side, side), Image.BICUBIC)
        folder = root / f"{i % 30 + 1:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i:04d}.jpg", quality=92)
    return n


def run_cli(tree: Path, out: Path, *extra: str) -> tuple[float, str, float]:
    """Wall seconds of the command, its output, and when (s after the start) the first sample began."""
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--source", "casia-webface", "--input", str(tree),
           "--out", str(out), "--preset", "lite", "--shard-size", "100", *extra]
    t0, clock = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    wall = time.perf_counter() - t0
    starts = [json.loads(f.read_text()).get("started") for f in (out / "stats").glob("*/*.json")]
    first = min((s for s in starts if s), default=clock) - clock
    return wall, proc.stdout + proc.stderr, first


def compute_seconds(out: Path) -> tuple[float, float]:
    """Seconds inside model calls summed over stages: (wall, CPU of the worker processes)."""
    stages = json.loads((out / "run.json").read_text())["summary"]["stages"]
    return (sum(st["seconds"] for st in stages.values()), sum(st.get("cpu_seconds", 0.0) for st in stages.values()))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def per_part(side: int, n: int = 40) -> dict[str, float]:
    """CPU ms per sample outside the models, by part (single thread)."""
    import cv2
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.core import imaging
    from pipeline.core.execute import decode_frame, encode_frame
    from stages.jpeg import jpeg_quality_from_bytes

    photos = sorted(FACES.rglob("*.jpg"))[:n]
    datas = []
    for p in photos:
        im = Image.open(p).convert("RGB").resize((side, side), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92)
        datas.append(buf.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, d in enumerate(datas):
            f = Path(tmp) / f"{i}.jpg"
            f.write_bytes(d)
            files.append(f)
        parts: dict[str, float] = {}

        def timed(name, fn, inputs):
            t0 = time.process_time()
            out = [fn(x) for x in inputs]
            parts[name] = (time.process_time() - t0) / len(photos) * 1000
            return out

        blobs = timed("read", lambda f: f.read_bytes(), files)
        timed("sha256", lambda d: hashlib.sha256(d).hexdigest(), blobs)
        images = timed("decode (PIL, full check)", lambda d: imaging.decode_rgb(d)[0], blobs)
        timed("JPEG quality (DQT)", jpeg_quality_from_bytes, blobs)
        crops = [cv2.resize(im, (512, 512)) for im in images]  # detect's aligned crop (made inside its call)
        frames = timed("frame 512 JPEG encode", lambda im: encode_frame(im, "jpg"), crops)
        timed("frame decode (hand-on)", decode_frame, frames)
        tar = tarfile.open(fileobj=io.BytesIO(), mode="w")

        def add(b):
            info = tarfile.TarInfo("k.jpg")
            info.size = len(b)
            tar.addfile(info, io.BytesIO(b))
        timed("tar members (8 per sample)", add, frames * 8)  # ~8 members per sample, payload + shard
        rows = [{"key": f"k{i}", "a": float(i), "b": [0.0] * 10, "s": "ok"} for i in range(len(photos))]
        pq.write_table(pa.Table.from_pylist(rows), Path(tmp) / "m.parquet")  # warm-up
        t0 = time.process_time()
        for _ in range(7):  # one manifest per stage
            pq.write_table(pa.Table.from_pylist(rows), Path(tmp) / "m.parquet")
        parts["manifest rows (7 stages)"] = (time.process_time() - t0) / len(photos) * 1000
    parts["total"] = sum(parts.values())
    return parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--big", type=int, default=1200, help="a second, larger tree (0: none)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the target row (the median is shown)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "in"
        build_tree(tree, args.n, 250)
        big = Path(tmp) / "in-big"
        if args.big:
            build_tree(big, args.big, 250)
        results = {}
        runs = [("default (auto → processes here)", tree, args.n, ()), ("--executor local", tree, args.n, ("--executor", "local")),
                ("--executor ray", tree, args.n, ("--executor", "ray"))]
        if args.big:
            runs += [("default (auto → processes here)", big, args.big, ()),
                     ("--executor local", big, args.big, ("--executor", "local"))]
        target = []  # (ratio, first, cpu) of every run of the target row
        for k, (label, folder, n, extra) in enumerate(runs):
            if "ray" in label and args.skip_ray:
                continue
            tries = []
            for i in range(args.repeat if k == 0 else 1):  # this VM's noise is ~±0.5 s a run
                out = Path(tmp) / f"out{len(results)}-{i}"
                wall, _, first = run_cli(folder, out, *extra)
                comp, cpu = compute_seconds(out)
                tries.append((wall / (cpu / cores), wall, first, comp, cpu, out))
            ratio, wall, first, comp, cpu, out = sorted(tries, key=lambda t: t[0])[len(tries) // 2]
            if k == 0:
                target = [(t[0], t[2], t[4]) for t in tries]
            results[(label, n)] = (wall, comp, out)
            lines.append(f"| {label} | {n} | {wall:.1f} | {first:.1f} | {cpu:.1f} | {ratio:.2f} | {comp:.1f} |")
        out = next(iter(results.values()))[2]
        stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
        wall, text, _ = run_cli(tree, out)
        rewritten = sum(1 for p in out.rglob("*") if p.is_file() and stamp.get(p) != p.stat().st_mtime_ns)
        noop = (wall, text.strip().splitlines(), rewritten)
        ratio = du(out) / du(out / "shards")
        payload_kb = du(out / "payloads") / args.n / 1024
        shard_kb = du(out / "shards") / args.n / 1024
    parts = {side: per_part(side) for side in (250, 1024)}
    body = ["### Wall time vs the stages' compute (lite preset, 250 px)", "",
            "| executor | photos | wall s | first sample at s | stage compute, CPU s (sum) | wall ÷ (compute ÷ cores) "
            "| time inside model calls s (sum) |", "|---|---|---|---|---|---|---|",
            *lines, "", f"The first row is the median of {len(target)} runs: ratios "
            f"{', '.join(f'{r:.2f}' for r, _, _ in sorted(target))}. Start-up floor of those runs: "
            f"{', '.join(f'{(f + c / cores) / (c / cores):.2f}' for _, f, c in sorted(target))} = (first sample at + "
            f"compute ÷ cores) ÷ (compute ÷ cores), the ratio if nothing but the stages' own compute followed the "
            f"start-up.", "", "Target ≤ 1.25 (300 photos, default executor). Wall is the whole command, interpreter and model "
            "start-up included; stage compute is the CPU time of the worker processes inside model calls, summed "
            "over stages and shards (the wall time inside those calls, last column, grows when more processes than "
            "cores share the machine, so it would flatter a ratio built on it).", "",
            NOTE, "",
            "### CPU ms per sample outside model calls", "",
            "| part | 250 px | 1024 px |", "|---|---|---|",
            *[f"| {k} | {parts[250][k]:.2f} | {parts[1024][k]:.2f} |" for k in parts[250]], "",
            "Targets: ≤ 50 ms at 250 px, ≤ 120 ms at 1024 px (each input is read, hashed and decoded once).", "",
            "### No-op rerun and disk", "",
            f"- no-op rerun of the same command: {noop[0]:.2f} s, {len(noop[1])} line(s) printed, "
            f"{noop[2]} file(s) rewritten (target < 5 s, 1 line, 0)",
            f"- OUT / shards = {ratio:.2f} (target ≤ 1.3); payloads {payload_kb:.1f} KB/sample beside "
            f"{shard_kb:.1f} KB/sample of shards (frames stored as JPEG q95 and handed on decoded; after pack "
            f"the shard serves what it holds)"]
    write_section("Core loop (CPU)", "\n".join(body),
                  f"python bench/core_loop.py --n {args.n} --big {args.big} --repeat {args.repeat}")
    print("\n".join(body))


if __name__ == "__main__":
    main()
