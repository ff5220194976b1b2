"""Throughput of the mediapipe landmarks stage and of the whole CPU pipeline on real faces.

    python bench/cpu_pipeline.py [--faces ../shared/faces/lfw10] [--repeat 3]

1. the stage alone in this process (one worker: decode excluded, process() only);
2. the whole pipeline (source step, landmarks, pack) with the local executor (one process);
3. the whole pipeline on embedded Ray with every core.
The photos are copied `--repeat` times under distinct identities so the run has enough work.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_section  # noqa: E402


def build_tree(faces: Path, root: Path, repeat: int) -> int:
    n = 0
    for r in range(repeat):
        for person in sorted(p for p in faces.iterdir() if p.is_dir()):
            dst = root / f"{person.name}_{r}"
            dst.mkdir(parents=True)
            for photo in sorted(person.glob("*.jpg")):
                shutil.copyfile(photo, dst / photo.name)
                n += 1
    return n


def stage_alone(faces: Path) -> float:
    from stages.base import Sample
    from stages.landmarks import LandmarksStage

    stage = LandmarksStage()
    stage.setup()
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(faces.rglob("*.jpg"))]
    batch = [Sample(key=f"k{i}", identity="x", image=im) for i, im in enumerate(images)]
    stage.process(batch[:4])  # warm-up
    t0 = time.perf_counter()
    stage.process(batch)
    return len(batch) / (time.perf_counter() - t0)


def whole(tree: Path, out: Path, executor: str, n: int) -> float:
    from pipeline.config import resolve
    from pipeline.core.runner import run

    cfg = resolve(flags={"source": "folder", "input": str(tree), "out": str(out), "stages": "landmarks",
                         "executor": executor, "shard_size": 100})
    t0 = time.perf_counter()
    run(cfg, quiet=True)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", default=str(Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw10"))
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    faces = Path(args.faces)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        n = build_tree(faces, tree, args.repeat)
        alone = stage_alone(faces)
        local = whole(tree, Path(tmp) / "out_local", "local", n)
        ray_all = whole(tree, Path(tmp) / "out_ray", "ray", n)
    rows = [("landmarks stage alone, 1 worker (process() only)", alone),
            ("whole CPU pipeline, local executor (1 process)", local),
            (f"whole CPU pipeline, Ray, all {os.cpu_count()} cores", ray_all)]
    body = (f"{n} real LFW photos (250x250 JPEG), shards of 100, stages: source, landmarks, pack. "
            "Whole-pipeline figures include Ray start-up and the source step.\n\n"
            "| what | img/s |\n|---|---|\n" + "\n".join(f"| {a} | {b:.1f} |" for a, b in rows))
    print(body)
    if not args.no_write:
        write_section("CPU pipeline (landmarks)", body, "python bench/cpu_pipeline.py")


if __name__ == "__main__":
    main()
