"""End to end on one GPU node: decode -> every default stage -> manifests and shards on disk.

    python bench/e2e.py --n 5000 --size 250          # CASIA-size JPEGs
    python bench/e2e.py --n 2000 --size 1024         # FFHQ-size JPEGs
    python bench/e2e.py --n 40 --device cpu --smoke  # a check that it runs (tiny models, no table)

Input: real photos (../shared/faces/lfw10) re-encoded at the requested size and repeated under
distinct identities up to ``--n``. Stages: the ``full`` preset; a model whose real weights are
absent runs its real architecture with random weights (the FLOPs are real; the table says which).
Reports img/s end to end, per-stage img/s (from OUT/stats), GPU busy % (nvidia-smi sampled every
0.2 s) and peak GPU memory; with ``--naive`` also runs bench/naive.py on a subset for the speed-up.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FACES = ROOT.parent / "shared" / "faces" / "lfw10"


def make_tree(root: Path, n: int, size: int) -> None:
    from PIL import Image

    photos = sorted(FACES.rglob("*.jpg"))
    encoded = []
    for p in photos:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC).save(buf, "JPEG", quality=92)
        encoded.append(buf.getvalue())
    for i in range(n):
        folder = root / f"{i // 20:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i % 20:03d}.jpg").write_bytes(encoded[i % len(encoded)])


def random_where_missing(device: str, smoke: bool) -> list[str]:
    """--set overrides: random weights for every full-preset model whose file is absent."""
    from pipeline.config import build_stage, resolve

    cfg = resolve(preset="full")
    sets = []
    for name in cfg.stages:
        values = dict(cfg.stage_config.get(name, {}))
        for field in ("device", "dtype"):
            if field in build_stage(name, {}).__dataclass_fields__:
                values[field] = device if field == "device" else ("fp32" if device == "cpu" else "bf16")
                sets.append(f"{name}.{field}={values[field]}")
        try:
            build_stage(name, values).check()
        except (FileNotFoundError, ValueError):
            if name == "caption":
                continue  # handled by --caption-dirs (tiny random HF models in smoke mode)
            sets.append(f"{name}.weights=random")
            if smoke and name == "restore":
                sets.append("restore.arch=tiny")
    return sets


class GpuSampler(threading.Thread):
    """nvidia-smi utilisation and memory every 0.2 s while the run goes."""

    def __init__(self):
        super().__init__(daemon=True)
        self.util: list[float] = []
        self.mem: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                u, m = out.stdout.strip().splitlines()[0].split(",")
                self.util.append(float(u))
                self.mem.append(float(m))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            time.sleep(0.2)


def stage_rates(out: Path) -> dict[str, float | None]:
    """img/s per stage of a finished run: samples / summed stage seconds (OUT/stats, all workers)."""
    per_stage = {}
    for d in sorted((out / "stats").iterdir()):
        stats = [json.loads(p.read_text()) for p in d.glob("*.json")]
        n, secs = sum(s["n"] for s in stats), sum(s["seconds"] for s in stats)
        per_stage[d.name] = round(n / secs, 1) if secs else None
    return per_stage


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=250)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--caption-dirs", default="", help="blip_base=DIR,blip_large=DIR,clip=DIR (local models)")
    ap.add_argument("--naive", type=int, default=0, help="also time bench/naive.py on this many images")
    args = ap.parse_args()
    sets = random_where_missing(args.device, args.smoke)
    if args.caption_dirs:
        dirs = dict(kv.split("=", 1) for kv in args.caption_dirs.split(","))
        if "clip" in dirs:
            sets.append(f"caption.clip_model={dirs.pop('clip')}")
        sets.append("caption.model_paths=" + json.dumps(dirs))
        sets.append(f"caption.captioners={json.dumps(sorted(dirs))}")
    with tempfile.TemporaryDirectory() as tmp:
        tree, out = Path(tmp) / "tree", Path(tmp) / "out"
        make_tree(tree, args.n, args.size)
        stages = "detect,restore,landmarks,pose,parsing,identity" + (",caption" if args.caption_dirs or not args.smoke else "")
        cmd = [sys.executable, "-m", "pipeline.cli", "run", "--source", "casia-webface", "--input", str(tree),
               "--out", str(out), "--stages", stages, "--shard-size", str(args.shard_size), "-q"]
        for s in sets:
            cmd += ["--set", s]
        sampler = GpuSampler()
        if args.device.startswith("cuda"):
            sampler.start()
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        sampler.stop.set()
        per_stage = stage_rates(out)
        run_json = json.loads((out / "run.json").read_text())
        random = sorted(k for k, v in run_json["provenance"].items() if v.get("weights_random"))
    naive = ""
    if args.naive:
        cmd = [sys.executable, str(ROOT / "bench" / "naive.py"), "--n", str(args.naive), "--device", args.device]
        if args.smoke:
            cmd.append("--smoke")
        line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rate = float(line.split()[1])
        naive = f"\n\nNaive composition (bench/naive.py, {args.naive} images): {rate:.2f} img/s; " \
                f"speed-up {args.n / wall / rate:.1f}x."
    busy = sum(u > 0 for u in sampler.util) / len(sampler.util) * 100 if sampler.util else float("nan")
    util = sum(sampler.util) / len(sampler.util) if sampler.util else float("nan")
    body = (f"{args.n} JPEGs at {args.size}x{args.size} (real photos re-encoded), full preset, {args.device}; "
            f"random weights (real architectures): {', '.join(random) or 'none'}.\n\n"
            f"| end to end img/s | wall s | GPU busy % of samples | mean GPU util % | peak GPU MiB |\n|---|---|---|---|---|\n"
            f"| {args.n / wall:.1f} | {wall:.1f} | {busy:.0f} | {util:.0f} | {max(sampler.mem, default=float('nan')):.0f} |\n\n"
            "Per stage (samples / summed stage seconds, all workers): "
            + ", ".join(f"{k} {v}" for k, v in per_stage.items()) + naive)
    print(body)
    if not args.smoke:
        from bench.report import write_section

        write_section(f"End to end, {args.size}px, {args.device}", body, " ".join(["python bench/e2e.py"] + sys.argv[1:]))


if __name__ == "__main__":
    main()
