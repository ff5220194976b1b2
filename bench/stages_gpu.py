"""Per-stage throughput of the model stages at several batch sizes (GPU, bf16 by default).

    python bench/stages_gpu.py                       # on a CUDA machine: writes docs/benchmarks.md
    python bench/stages_gpu.py --device cpu --smoke  # a quick check that it runs (nothing written)

Each stage runs its real ``process()`` on 512x512 aligned crops made by the detect stage from
real photos (``../shared/faces``), repeated to fill the batch. Weights: the real file where it is
present in the weights directory or bundled, else the real architecture with random weights —
the table says which (the FLOPs are the same; the outputs are not annotations).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_section  # noqa: E402

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw10"

# (label, stage, config) — the default models of the full preset plus the lite ones
CASES = [
    ("detect retinaface_resnet50", "detect", {"model": "retinaface_resnet50"}),
    ("detect retinaface_mobile0.25", "detect", {"model": "retinaface_mobile0.25"}),
    ("restore codeformer w=0.5", "restore", {"model": "codeformer"}),
    ("pose hopenet_r50", "pose", {"model": "hopenet_r50"}),
    ("pose lightweight_headpose", "pose", {"model": "lightweight_headpose"}),
    ("parsing bisenet", "parsing", {"model": "bisenet"}),
    ("identity arcface_irse50", "identity", {"model": "arcface_irse50"}),
    ("identity mobilefacenet", "identity", {"model": "mobilefacenet"}),
    ("expression tddfa_v2_mb05", "expression", {}),
    ("attributes fer2013 emotion", "attributes", {}),
]


def aligned_samples(n: int):
    """Detect + align real photos once (on the CPU, bundled weights) into Samples."""
    from stages.base import Sample
    from stages.detect import Detect

    det = Detect(model="retinaface_mobile0.25", device="cpu")
    det.setup()
    photos = sorted(FACES.rglob("*.jpg"))[:16]
    srcs = [Sample(key=f"k{i}", identity="x", image=np.asarray(Image.open(p).convert("RGB")))
            for i, p in enumerate(photos)]
    results = det.process(srcs)
    good = [(s, r) for s, r in zip(srcs, results) if r.status == "ok"]
    out = []
    for i in range(n):
        s, r = good[i % len(good)]
        out.append(Sample(key=f"s{i}", identity="x", image=r.frame, frame="aligned", upstream={"detect": r}))
    return out


def build(stage_name: str, config: dict, device: str, dtype: str):
    from pipeline.config import build_stage
    from stages.models.registry import BadChecksum, MissingWeights, UnverifiedWeights

    values = {**config, "device": device}
    if "dtype" in {f for f in __import__("stages").stage_class(stage_name).__dataclass_fields__}:
        values["dtype"] = dtype
    stage = build_stage(stage_name, values)
    try:
        stage.check()
        weights = "real"
    except (MissingWeights, UnverifiedWeights, BadChecksum):
        stage = build_stage(stage_name, {**values, "weights": "random"})
        weights = "random"
    stage.setup()
    return stage, "random" if stage.provenance().weights_random else weights


def measure(stage, samples, batch: int, repeats: int, sync) -> float:
    stage.batch_size = batch
    stage.process(samples[:batch])  # warm-up (cudnn autotune, lazy init)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        stage.process(samples[:batch])
    sync()
    return batch * repeats / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batches", default="8,32,128")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="batch 2, one repeat, no table written")
    args = ap.parse_args()
    import torch

    batches = [2] if args.smoke else [int(b) for b in args.batches.split(",")]
    repeats = 1 if args.smoke else args.repeats
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    samples = aligned_samples(max(batches))
    rows = []
    for label, stage_name, config in CASES:
        if args.smoke and stage_name == "restore":
            config = {**config, "arch": "tiny", "weights": "random"}
        stage, weights = build(stage_name, config, args.device, args.dtype)
        rates = []
        for b in batches:
            try:
                rates.append(f"{measure(stage, samples, b, repeats, sync):.0f}")
            except torch.cuda.OutOfMemoryError:
                rates.append("OOM")
                torch.cuda.empty_cache()
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
        rows.append((label, weights, rates, peak))
        print(label, weights, rates, flush=True)
        del stage
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    head = "| stage | weights | " + " | ".join(f"img/s @ {b}" for b in batches) + " | peak GiB |"
    sep = "|---|---|" + "---|" * len(batches) + "---|"
    body = "\n".join(f"| {l} | {w} | " + " | ".join(r) + f" | {p:.1f} |" for l, w, r, p in rows)
    text = (f"process() only (decode and I/O excluded), {args.dtype}, 512x512 aligned crops of real photos.\n\n"
            f"{head}\n{sep}\n{body}")
    print(text)
    if not args.smoke:
        write_section(f"Model stages on {args.device} ({args.dtype})", text, "python bench/stages_gpu.py")


if __name__ == "__main__":
    main()
