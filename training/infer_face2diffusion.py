"""Face2Diffusion inference: one face photo and a prompt template -> an image (Appendix E: Euler
ancestral, 30 steps, classifier-free guidance 7.0).

The face is found with a registered RetinaFace (mobile0.25 is bundled), aligned to the ArcFace
template and encoded by the checkpoint's MSID encoder; the expression is the learned v~_exp
(Sec. 3.3, so the prompt decides it) unless an expression vector is given. ``{}`` in the prompt
marks where S* goes; the unconditional branch is the empty prompt.

    python -m training.infer_face2diffusion --base CompVis/stable-diffusion-v1-4 \\
        --checkpoint OUT/runs/face2diffusion/checkpoints/final.ckpt --reference me.jpg \\
        --prompt "a photo of {} as a chef" --out out.png
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler

from stages.models import align, load, retinaface
from training.face2diffusion import F2DConfig, Face2Diffusion
from training.infer_common import guided_latents, inference_parser, parse_inference, read_rgb, to_uint8, write_rgb
from training.sd import load_sd
from training.text_tokens import fill, placeholder_positions

FACE_SIZE = 112


@dataclass
class InferenceConfig:
    steps: int = 30  # Euler ancestral steps
    guidance_scale: float = 7.0
    resolution: int = 512
    seed: int = 0
    detector: str = "retinaface_mobile0.25"
    conf_threshold: float = 0.8
    weights_dir: str = ""


def load_model(base: str, checkpoint: str | Path) -> Face2Diffusion:
    """Frozen SD from ``base``; mapping networks, v~_exp and the MSID settings from the checkpoint."""
    from training.train import make

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "face2diffusion" not in ckpt:
        raise ValueError(f"{checkpoint} is not a face2diffusion checkpoint")
    model = Face2Diffusion(load_sd(base), make(F2DConfig, ckpt["face2diffusion"], "model"))
    model.load_trainable(ckpt["state_dict"])
    return model.eval()


def aligned_face(image: np.ndarray, cfg: InferenceConfig, detector: object | None = None) -> torch.Tensor:
    """The largest face of an RGB photo, ArcFace-aligned, (1, 3, 112, 112) in [-1, 1]."""
    detector = detector or load(cfg.detector, cfg.weights_dir or None)
    dets = retinaface.detect(detector, [image], score_floor=cfg.conf_threshold)[0]
    if not len(dets):
        raise ValueError("no face found in the reference image")
    main = dets[int(np.argmax((dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])))]
    face, _ = align.align(np.ascontiguousarray(image), main[5:15], align.ARCFACE_112, FACE_SIZE)
    return torch.from_numpy(face).permute(2, 0, 1)[None].float() / 127.5 - 1


@torch.no_grad()
def generate(model: Face2Diffusion, face: torch.Tensor, prompt: str, cfg: InferenceConfig | None = None,
             expression: np.ndarray | None = None) -> np.ndarray:
    """An RGB uint8 image for ``prompt`` (with one ``{}``) of the person in ``face`` (aligned_face)."""
    cfg = cfg or InferenceConfig()
    model.eval()
    device = model.device
    text, spans = fill(prompt, model.cfg.placeholder, model.cfg.tokens)
    ids, pos = placeholder_positions(model.tokenizer, [text], [spans], model.n_text)
    if (pos < 0).any():
        raise ValueError(f"the prompt is too long: the identity tokens of {prompt!r} were truncated")
    exp = None if expression is None else torch.as_tensor(expression, dtype=torch.float32, device=device)[None]
    s_star = model.word_embeddings(model.identity_vector(face.to(device)), exp)
    cond = model.prompt_context(s_star, ids.to(device), pos.to(device))
    empty = model.tokenizer([""], padding="max_length", max_length=model.n_text, return_tensors="pt").input_ids
    uncond = model.text_encoder(empty.to(device))[0]
    context = torch.cat([uncond.float(), cond.float()])
    sched = EulerAncestralDiscreteScheduler.from_config(model.scheduler.config)
    z = guided_latents(sched, cfg, model.unet.config.in_channels, len(model.vae.config.block_out_channels), device,
                       lambda z_in, t: model.denoise(z_in, t, context).chunk(2), ancestral=True)
    return to_uint8(model.decode_latents(z))


def main(argv: list[str] | None = None) -> None:
    ap = inference_parser(__doc__, "1.4", reference=True)
    ap.add_argument("--checkpoint", required=True)
    args, cfg = parse_inference(ap, argv, InferenceConfig)
    model = load_model(args.base, args.checkpoint).to(args.device)
    write_rgb(args.out, generate(model, aligned_face(read_rgb(args.reference), cfg), args.prompt, cfg))


if __name__ == "__main__":
    main()
