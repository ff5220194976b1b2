"""Throughput of the caption stage on one GPU: img/s per candidate set and batch size, bf16.

    python bench/caption.py [--batches 64 256] [--images 512] [--models-dir DIR] [--no-write]
    python bench/caption.py --smoke          # tiny random models on the CPU, prints only

Each candidate set (BLIP base, BLIP large, both) runs the whole stage (``process()``: image
preprocessing, beam search and nucleus sampling, cleaning, CLIP ViT-L/14 scoring) on 512x512
face crops; a CLIP-only row isolates the scoring. Real weights are used when the models resolve
offline (HF cache, or ``--models-dir`` holding ``<hf id>`` folders); otherwise the real
architectures are built from configs with random weights and saved once under ``--models-dir``.
Random decoders rarely emit the end token, so every caption runs to ``max_new_tokens``: an
upper bound for the generation time of real weights (captions of ~10-15 tokens).
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
from bench.report import write_section  # noqa: E402

SETS = (("blip_base",), ("blip_large",), ("blip_base", "blip_large"))
FACE_DIRS = (ROOT.parent / "shared" / "faces" / "lfw10", ROOT / "pipeline" / "data" / "sample")


def face_images(n: int, size: int) -> list[np.ndarray]:
    """``n`` face crops of ``size`` px from the real photos at hand (cycled), noise if none."""
    for folder in FACE_DIRS:
        photos = sorted(folder.rglob("*.jpg")) if folder.is_dir() else []
        if photos:
            base = [np.array(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)) for p in photos]
            return [base[i % len(base)] for i in range(n)]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def model_dirs(root: Path, smoke: bool) -> tuple[dict[str, Path], bool]:
    """(name -> model dir, random?) for blip_base, blip_large and clip (key "clip")."""
    from stages import captioners as caps
    from stages.caption import CLIP_DEFAULT
    from tests.fixtures import tiny_hf

    if smoke:
        models = tiny_hf.tiny_models(root)
        return {k: models[k] for k in ("blip_base", "blip_large", "clip")}, True
    ids = {"blip_base": caps.get("blip_base").default, "blip_large": caps.get("blip_large").default,
           "clip": CLIP_DEFAULT}
    try:
        return {k: caps.resolve_location(v, k, weights_dir=root) for k, v in ids.items()}, False
    except FileNotFoundError as exc:
        print(f"real weights not found ({exc}); using random weights of the real architectures")
    builders = {"blip_base": lambda d: tiny_hf.save_blip(d, "base"),
                "blip_large": lambda d: tiny_hf.save_blip(d, "large"),
                "clip": lambda d: tiny_hf.save_clip(d, "real")}
    dirs = {}
    for name, build in builders.items():
        d = root / "random" / name
        if not (d / caps.RANDOM_MARKER).exists():
            t0 = time.perf_counter()
            build(d)
            print(f"built random {name} in {time.perf_counter() - t0:.0f} s")
        dirs[name] = d
    return dirs, True


def timed(fn, device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench(args: argparse.Namespace, root: Path) -> tuple[list[tuple], bool]:
    import torch

    from stages.base import Sample
    from stages.caption import Caption

    device = "cpu" if args.smoke else "cuda"
    dirs, random = model_dirs(root, args.smoke)
    images = face_images(args.images, 64 if args.smoke else 512)
    samples = [Sample(key=f"b{i:05d}", identity="0000001", image=im, frame="aligned") for i, im in enumerate(images)]
    rows = []
    for names in SETS:
        stage = Caption(captioners=list(names), model_paths={n: str(dirs[n]) for n in names},
                        clip_model=str(dirs["clip"]), device=device, dtype=args.dtype,
                        max_new_tokens=args.max_new_tokens, min_score=-1.0)
        stage.check()
        stage.setup()
        for bs in args.batches:
            stage.batch_size = bs
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            stage.process(samples[:bs])  # warm-up: kernels, allocator
            seconds = timed(lambda: stage.process(samples), device)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
            rows.append(("+".join(names), bs, len(samples) / seconds, peak))
            print(rows[-1], flush=True)
        scorer = stage._scorer
        texts = [[f"a man with a beard in a suit and tie, take {i} {j}" for j in range(12)]
                 for i in range(len(samples))]
        stage = None  # frees the captioners before the next set loads
        if device == "cuda":
            torch.cuda.empty_cache()
    for bs in args.batches:
        def score_all() -> None:
            for i in range(0, len(samples), bs):
                scorer.score(images[i:i + bs], texts[i:i + bs])

        scorer.score(images[:bs], texts[:bs])  # warm-up
        rows.append(("CLIP scoring only (12 distinct texts/img)", bs, len(samples) / timed(score_all, device), 0.0))
        print(rows[-1], flush=True)
    return rows, random


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--max-new-tokens", type=int, default=30)
    ap.add_argument("--models-dir", default=None, help="Where real snapshots are looked up and random ones kept.")
    ap.add_argument("--smoke", action="store_true", help="Tiny random models on the CPU; prints, never writes.")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.batches, args.images, args.max_new_tokens = [2, 4], 8, 5
    with tempfile.TemporaryDirectory() as tmp:
        rows, random = bench(args, Path(args.models_dir or tmp))
    weights = ("tiny random models (smoke)" if args.smoke else
               "random weights of the real architectures" if random else "real weights")
    body = (f"caption stage `process()` on {args.images} 512x512 face crops, {args.dtype} autocast, {weights}; "
            f"per captioner 3 beam (width 3) + 3 nucleus-sampled captions (top_p 0.9), max_new_tokens "
            f"{args.max_new_tokens}, CLIP ViT-L/14 scoring, cleaning and ranking included. "
            "Random decoders run every caption to max_new_tokens (upper bound).\n\n"
            "| candidates | batch | img/s | peak GPU GiB |\n|---|---|---|---|\n"
            + "\n".join(f"| {n} | {bs} | {ips:.1f} | {peak:.1f} |" for n, bs, ips, peak in rows))
    print(body)
    if not (args.smoke or args.no_write):
        write_section("caption stage (GPU)", body, "python bench/caption.py")


if __name__ == "__main__":
    main()
