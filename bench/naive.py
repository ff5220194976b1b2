"""The naive composition the seed projects use: per image, batch 1, fp32, one model after another,
the image re-decoded from disk by every stage and intermediate crops written back as files.

    python bench/naive.py --n 50                   # on a CUDA machine
    python bench/naive.py --n 3 --device cpu --smoke

Same models and weights policy as bench/e2e.py (random where the real file is absent). Prints
img/s; bench/e2e.py divides its own figure by this one for the speed-up.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FACES = ROOT.parent / "shared" / "faces" / "lfw10"
ORDER = ("detect", "restore", "landmarks", "pose", "parsing", "identity", "caption")


def build_all(device: str, smoke: bool, skip_caption: bool, overrides: dict | None = None) -> dict:
    """Set up every stage of ORDER (full preset + ``overrides``: stage -> field values), batch 1, fp32."""
    from pipeline.config import build_stage, resolve

    cfg = resolve(preset="full")
    built = {}
    for name in ORDER:
        if name == "caption" and skip_caption:
            continue
        values = {**cfg.stage_config.get(name, {}), **(overrides or {}).get(name, {})}
        fields = build_stage(name, {}).__dataclass_fields__
        if "device" in fields:
            values.update(device=device)
        if "dtype" in fields:
            values.update(dtype="fp32")
        if "batch_size" in fields:
            values.update(batch_size=1)
        stage = build_stage(name, values)
        try:
            stage.check()
        except (FileNotFoundError, ValueError):
            values["weights"] = "random"
            if smoke and name == "restore":
                values["arch"] = "tiny"
            stage = build_stage(name, values)
        stage.setup()
        built[name] = stage
    return built


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def run_one(stages: dict, photo: Path, tmp: Path, i: int) -> None:
    from stages.base import Sample

    src = Sample(key=f"k{i}", identity="x", image=read_rgb(photo))
    det = stages["detect"].process([src])[0]
    if det.status != "ok":
        return
    crop = tmp / f"{i}_aligned.png"
    Image.fromarray(det.frame).save(crop)
    frame = crop
    if "restore" in stages:
        res = stages["restore"].process([Sample(key=src.key, identity="x", image=read_rgb(crop), frame="aligned",
                                                upstream={"detect": det})])[0]
        if res.status == "ok":
            frame = tmp / f"{i}_restored.png"
            Image.fromarray(res.frame).save(frame)
    for name in ("landmarks", "pose", "parsing", "identity", "caption"):
        if name in stages:  # every stage re-reads and re-decodes the image, as separate scripts do
            stages[name].process([Sample(key=src.key, identity="x", image=read_rgb(frame), frame="aligned",
                                         upstream={"detect": det})])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--no-caption", action="store_true")
    args = ap.parse_args()
    stages = build_all(args.device, args.smoke, args.no_caption or args.smoke)
    photos = sorted(FACES.rglob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        run_one(stages, photos[0], Path(tmp), -1)  # warm-up
        t0 = time.perf_counter()
        for i in range(args.n):
            run_one(stages, photos[i % len(photos)], Path(tmp), i)
        rate = args.n / (time.perf_counter() - t0)
    print(f"naive: {rate:.2f} img/s over {args.n} images ({args.device}, batch 1, fp32, stages {', '.join(stages)})")


if __name__ == "__main__":
    main()
