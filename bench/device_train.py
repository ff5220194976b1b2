"""The trainer parts of bench/device_check.py: bench/train_*.py's step timing on the real-size SD
architectures (random weights) on the GPU, tiny SD components in smoke."""
from __future__ import annotations

from bench.device_ctx import DENSE_FACE_BATCHES, PORTRAITBOOTH_BATCHES, Ctx, gib_or_none, built_on


def dense_face_part(ctx: Ctx) -> None:
    """bench/train_dense_face.py's step time and peak memory (SD 2.1 size on the GPU, tiny in smoke)."""
    import torch

    from bench import train_dense_face as bench
    from training.dense_face import DenseFace, DenseFaceConfig
    from training.sd import sd21_components, tiny_sd_components

    device = torch.device(ctx.device)
    if ctx.smoke:
        cfg = DenseFaceConfig(dense_size=16, id_dim=512, id_hidden=32, head_channels=16, gradient_checkpointing=True)
    else:  # as bench/train_dense_face.py runs by default
        cfg = DenseFaceConfig(id_dim=512, frozen_dtype="bf16", gradient_checkpointing=True)
    parts = tiny_sd_components if ctx.smoke else (lambda: sd21_components(torch.bfloat16))
    model = built_on(ctx.device, lambda: DenseFace(parts(), cfg)).to(device).train()
    res, steps, warmup = (64, 1, 0) if ctx.smoke else (512, 3, 1)
    rows: dict = {}
    for n in ctx.pick(DENSE_FACE_BATCHES):
        try:
            sec, peak = bench.measure(model, n, res, steps, warmup, device)
            rows[str(n)] = {"s_step": round(sec, 3), "img_s": round(n / sec, 2), "peak_gib": gib_or_none(peak)}
        except torch.cuda.OutOfMemoryError:
            rows[str(n)] = {"s_step": "OOM"}
            torch.cuda.empty_cache()
        ctx.save({"res": res, "batches": rows}, gradient_checkpointing=cfg.gradient_checkpointing)


def portraitbooth_part(ctx: Ctx) -> None:
    """bench/train_portraitbooth.py's step time (t > R_t and t <= R_t) and peak memory."""
    from dataclasses import replace

    import torch

    from bench import train_portraitbooth as bench
    from training.portraitbooth import PortraitBooth, PortraitBoothConfig
    from training.sd import tiny_sd_components

    device = torch.device(ctx.device)
    cfg = PortraitBoothConfig(id_dim=512, gradient_checkpointing=True)  # bench/train_portraitbooth.py's default
    cfg = replace(cfg, mlp_hidden=32) if ctx.smoke else replace(cfg, frozen_dtype="bf16")
    parts = tiny_sd_components if ctx.smoke else bench.sd15_components
    model = built_on(ctx.device, lambda: PortraitBooth(parts(), cfg)).to(device).train()
    res, steps, warmup = (64, 1, 0) if ctx.smoke else (512, 3, 1)
    rows: dict = {}
    for n in ctx.pick(PORTRAITBOOTH_BATCHES):
        try:
            plain, _ = bench.measure(model, n, res, steps, warmup, device, with_id=False)
            sec, peak = bench.measure(model, n, res, steps, warmup, device, with_id=True)
            rows[str(n)] = {"s_step_plain": round(plain, 3), "s_step_id": round(sec, 3),
                            "img_s_id": round(n / sec, 2), "peak_gib_id": gib_or_none(peak)}
        except torch.cuda.OutOfMemoryError:
            rows[str(n)] = {"s_step_id": "OOM"}
            torch.cuda.empty_cache()
        ctx.save({"res": res, "batches": rows}, gradient_checkpointing=cfg.gradient_checkpointing)
