"""PortraitBooth training step time and peak GPU memory on the real-size SD 1.5 architecture.

    python bench/train_portraitbooth.py                   # GPU: batch 1, 2, 8 at 512^2, bf16
    python bench/train_portraitbooth.py --batches 2 --no-checkpointing
    python bench/train_portraitbooth.py --smoke           # tiny models on CPU, prints only

Random weights (no download): UNet/VAE/text encoder built from the SD 1.5 configs below, the bundled
MobileFaceNet (real weights) as the identity-loss network, 512-d reference embeddings (ArcFace-sized);
synthetic batches (the data loader is not measured). A step is forward + backward + AdamW on the UNet
and the subject MLP under bf16 autocast, VAE and text encoder in bf16, with the attention maps of the
identity and expression tokens recorded in every cross-attention layer. Two timings per batch size:
every sample at t > R_t (no identity loss) and every sample at t <= R_t (the VAE decode and the
recogniser in the graph: the worst case, whose peak memory is reported). Writes its table into
docs/benchmarks.md (section ``train_portraitbooth``) unless ``--smoke``.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_section  # noqa: E402
from bench.timing import run_settings, time_steps  # noqa: E402
from stages.models import align  # noqa: E402
from training.portraitbooth import PortraitBooth, PortraitBoothConfig  # noqa: E402
from training.sd import SCHEDULER_CONFIG, SD21_VAE, SDComponents, tiny_sd_components, tiny_tokenizer  # noqa: E402

SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
SD15_TEXT: dict[str, Any] = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
CAPTION = "a photo of a smiling man"


def sd15_components() -> SDComponents:
    """The SD 1.5 architecture with random weights (fp32); the tokenizer is the tiny one."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    return SDComponents(
        unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**SD21_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)), tokenizer=tiny_tokenizer(),
        scheduler=DDPMScheduler(**SCHEDULER_CONFIG),
    )


def synthetic_batch(n: int, res: int, id_dim: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(n)
    mask = torch.zeros(n, 1, res, res)
    mask[..., res // 4: 3 * res // 4, res // 4: 3 * res // 4] = 1
    points = torch.from_numpy(align.ffhq_template(res)).float()
    batch = {
        "image": torch.rand(n, 3, res, res, generator=g) * 2 - 1,
        "face_mask": mask,
        "points5": points.expand(n, 5, 2).clone(),
        "ref_embedding": torch.nn.functional.normalize(torch.randn(n, id_dim, generator=g), dim=1),
        "ref_face": torch.rand(n, 3, 112, 112, generator=g) * 2 - 1,
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    man, smiling = CAPTION.index("man", CAPTION.index("smiling") + 7), CAPTION.index("smiling")
    batch["caption"] = [CAPTION] * n
    batch["id_span"] = torch.tensor([[man, man + 3]] * n)
    batch["emotion_span"] = torch.tensor([[smiling, smiling + 7]] * n)
    return batch


def measure(model: PortraitBooth, n: int, res: int, steps: int, warmup: int, device: torch.device,
            with_id: bool) -> tuple[float, float]:
    """(seconds per step, peak GiB) for batch size ``n``; raises torch.cuda.OutOfMemoryError."""
    opt = model.configure_optimizers()["optimizer"]
    batch = synthetic_batch(n, res, model.cfg.id_dim, device)
    t_step = model.cfg.r_t if with_id else model.cfg.r_t + 1  # t <= R_t switches the identity loss on
    no = torch.zeros(n, dtype=torch.bool, device=device)

    def loss_of(i: int) -> torch.Tensor:
        draw = model.draw(batch, i)
        draw = replace(draw, t=torch.full_like(draw.t, t_step), uncond=no, text_only=no)
        return model.training_step(batch, i, draw=draw)["loss"]

    return time_steps(loss_of, opt, steps, warmup, device)


def main() -> None:
    run = run_settings(__doc__, "1,2,8")
    device, res, batches, ckpt = run.device, run.res, run.batches, run.checkpointing
    steps, warmup = run.steps, run.warmup
    cfg = PortraitBoothConfig(id_dim=512, gradient_checkpointing=ckpt)
    if run.smoke:
        sd, cfg = tiny_sd_components(), replace(cfg, mlp_hidden=32)
    else:
        sd, cfg = sd15_components(), replace(cfg, frozen_dtype="bf16")
    model = PortraitBooth(sd, cfg).to(device).train()
    trainable = sum(p.numel() for p in model.trainable_parameters()) / 1e6
    rows = ["| batch | s/step, t > R_t | s/step, t <= R_t | img/s, t <= R_t | peak GiB, t <= R_t |",
            "|---:|---:|---:|---:|---:|"]
    for n in batches:
        try:
            plain, _ = measure(model, n, res, steps, warmup, device, with_id=False)
            sec, peak = measure(model, n, res, steps, warmup, device, with_id=True)
            rows.append(f"| {n} | {plain:.3f} | {sec:.3f} | {n / sec:.2f} | {peak:.1f} |")
        except torch.cuda.OutOfMemoryError:
            rows.append(f"| {n} | OOM | | | |")
        print(rows[-1], flush=True)
    arch = "tiny SD components (smoke run, CPU)" if run.smoke else "SD 1.5 architecture with random weights"
    body = (f"PortraitBooth training step at {res}x{res}: {arch}, bf16 autocast, "
            f"VAE and text encoder in bf16, gradient checkpointing {'on' if ckpt else 'off'} (UNet and VAE), "
            f"{trainable:.0f} M trainable parameters (UNet + subject MLP, AdamW), {model.n_cross} recorded "
            f"cross-attention layers, identity loss through the VAE decoder and MobileFaceNet, "
            f"{steps} timed steps after {warmup} warm-up.\n\n" + "\n".join(rows))
    print(body)
    if not run.smoke:
        write_section("train_portraitbooth", body, "python bench/train_portraitbooth.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
