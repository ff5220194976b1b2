"""Dense-Face training step time and peak GPU memory on the real-size SD 2.1 architecture.

    python bench/train_dense_face.py                      # GPU: batch 1, 4, 12 at 512^2, bf16
    python bench/train_dense_face.py --batches 12 --no-checkpointing
    python bench/train_dense_face.py --smoke              # tiny models on CPU, prints only

Random weights (no download): UNet/VAE/text encoder built from the SD 2.1 (512, epsilon)
configs in ``training/sd.py``; synthetic batches (the data loader is not measured). A step is
forward + backward + AdamW on the trainable parts (pose branch, identity MLP, PC-adapter,
annotation head) under bf16 autocast, frozen weights in bf16. Writes its table into
docs/benchmarks.md (section ``train_dense_face``) unless ``--smoke``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_section  # noqa: E402
from bench.timing import run_settings, time_steps  # noqa: E402
from training.dense_face import DenseFace, DenseFaceConfig  # noqa: E402
from training.sd import sd21_components, tiny_sd_components  # noqa: E402


def synthetic_batch(n: int, res: int, id_dim: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(n)
    lmk = torch.rand(n, 468, 3, generator=g) * res
    batch = {
        "image": torch.rand(n, 3, res, res, generator=g) * 2 - 1,
        "pose": torch.rand(n, 3, res, res, generator=g),
        "landmarks": lmk,
        "depth": torch.rand(n, 1, res, res, generator=g),
        "mask": torch.randint(0, 10, (n, res, res), generator=g),
        "ref_embedding": torch.nn.functional.normalize(torch.randn(n, id_dim, generator=g), dim=1),
        "id_span": torch.tensor([[13, 17]] * n),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["caption"] = ["a photo of a face smiling at the camera"] * n
    return batch


def measure(model: DenseFace, n: int, res: int, steps: int, warmup: int,
            device: torch.device) -> tuple[float, float]:
    """(seconds per step, peak GiB) for batch size ``n``; raises torch.cuda.OutOfMemoryError."""
    opt = model.configure_optimizers()["optimizer"]
    batch = synthetic_batch(n, res, model.cfg.id_dim, device)
    return time_steps(lambda i: model.training_step(batch, i)["loss"], opt, steps, warmup, device)


def main() -> None:
    run = run_settings(__doc__, "1,4,12")
    device, res, batches, ckpt = run.device, run.res, run.batches, run.checkpointing
    steps, warmup = run.steps, run.warmup
    if run.smoke:
        sd = tiny_sd_components()
        cfg = DenseFaceConfig(dense_size=16, id_dim=512, id_hidden=32, head_channels=16, gradient_checkpointing=ckpt)
    else:
        sd = sd21_components(torch.bfloat16)
        cfg = DenseFaceConfig(id_dim=512, frozen_dtype="bf16", gradient_checkpointing=ckpt)
    model = DenseFace(sd, cfg).to(device).train()
    trainable = sum(p.numel() for p in model.trainable_parameters()) / 1e6
    rows = ["| batch | s/step | img/s | peak GiB |", "|---:|---:|---:|---:|"]
    for n in batches:
        try:
            sec, peak = measure(model, n, res, steps, warmup, device)
            rows.append(f"| {n} | {sec:.3f} | {n / sec:.2f} | {peak:.1f} |")
        except torch.cuda.OutOfMemoryError:
            rows.append(f"| {n} | OOM | | |")
        print(rows[-1], flush=True)
    body = (f"Dense-Face training step at {res}x{res}: SD 2.1 architecture with random weights, bf16 autocast, "
            f"frozen weights bf16, gradient checkpointing {'on' if ckpt else 'off'}, {trainable:.0f} M trainable "
            f"parameters (AdamW), dense maps {cfg.dense_size}^2 with {len(model.subset)} landmark heatmaps, "
            f"{steps} timed steps after {warmup} warm-up.\n\n" + "\n".join(rows))
    print(body)
    if not run.smoke:
        write_section("train_dense_face", body, "python bench/train_dense_face.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
