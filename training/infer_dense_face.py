"""Dense-Face inference (Sec. 3.6): text-editing mode, then face-generation mode with latent blending.

1. text-editing mode (plain SD) draws the base image from the prompt;
2. the face region is cropped (``locate_face``), its pose image and face mask are made
   (``pose_of``, ``mask_of``: e.g. the pipeline's pose and parsing stages; tests pass fixed ones);
3. face-generation mode repaints the crop with the reference's identity, blending its latents
   with the re-noised crop outside the mask at every step (Fig. 7);
4. the new face is pasted back into the base image.
Images are uint8 RGB numpy arrays.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from training.dense_face import DenseFace, DenseFaceConfig
from training.infer_common import to_uint8
from training.sd import load_sd

Box = tuple[int, int, int, int]


@dataclass
class InferenceConfig:
    steps: int = 25  # DDIM steps (the paper: 25)
    guidance_scale: float = 7.5
    strength: float = 1.0  # share of the schedule the face pass re-runs: k of Fig. 7
    resolution: int = 512  # base image and face crop side
    pose_scale: float = 1.0
    face_margin: float = 0.25  # the face box grows by this share on each side before cropping
    feather: float = 0.04  # paste-back edge softness, share of the crop side
    seed: int = 0


def load_model(base: str, checkpoint: str | Path, config: str | Path = "dense_face",
               overrides: Iterable[str] = ()) -> DenseFace:
    """Frozen SD from ``base`` plus the trainable weights of a training checkpoint."""
    from training.train import load_config, make

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    cfg = make(DenseFaceConfig, load_config(config, overrides).get("model"), "model")
    cfg.id_dim = int(state["id_mlp.net.0.weight"].shape[1])
    model = DenseFace(load_sd(base), cfg)  # fp32 load, DenseFace casts the frozen parts
    model.load_trainable(state)
    return model.eval()


def subject_span(prompt: str, subject: str | None, word: str) -> tuple[str, tuple[int, int]]:
    """The prompt with its first ``subject`` word replaced by the identity word, and that word's span."""
    m = re.search(rf"\b{re.escape(subject)}\b", prompt) if subject else None
    if not m:
        return prompt, (-1, -1)
    return prompt[:m.start()] + word + prompt[m.end():], (m.start(), m.start() + len(word))


def _image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device) / 255.0


def _scheduler(model: DenseFace, steps: int) -> DDIMScheduler:
    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps)
    return sched


def _guided(model: DenseFace, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
            pose: torch.Tensor | None, face_mode: bool, cfg: InferenceConfig) -> torch.Tensor:
    if cfg.guidance_scale == 1.0:
        return model.denoise(z, t.expand(len(z)), cond, pose, face_mode, cfg.pose_scale)
    pose2 = None if pose is None else torch.cat([pose, pose])
    e_u, e_c = model.denoise(torch.cat([z, z]), t.expand(2 * len(z)), torch.cat([uncond, cond]), pose2,
                             face_mode, cfg.pose_scale).chunk(2)
    return e_u + cfg.guidance_scale * (e_c - e_u)


@torch.no_grad()
def text_editing(model: DenseFace, prompt: str, cfg: InferenceConfig, generator: torch.Generator) -> np.ndarray:
    """G1: the frozen SD alone draws the base image."""
    no_span = torch.tensor([[-1, -1], [-1, -1]])
    text, _ = model.encode_text([prompt, ""], no_span)
    side = cfg.resolution // model.vae_factor
    sched = _scheduler(model, cfg.steps)
    z = torch.randn((1, 4, side, side), generator=generator).to(model.device) * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = _guided(model, sched.scale_model_input(z, t), t.to(model.device), text[:1], text[1:], None, False, cfg)
        z = sched.step(eps, t, z).prev_sample
    return to_uint8(model.decode_latents(z))


@torch.no_grad()
def face_generation(model: DenseFace, face: np.ndarray, reference_embedding: np.ndarray, pose: np.ndarray,
                    mask: np.ndarray, prompt: str, span: tuple[int, int], cfg: InferenceConfig,
                    generator: torch.Generator) -> np.ndarray:
    """G2 with the latent blending of Fig. 7: only the masked face region is repainted."""
    device = model.device
    z_bg = model.encode_images(_image_tensor(face, device) * 2 - 1, generator)
    ref = torch.as_tensor(reference_embedding, dtype=torch.float32, device=device)[None]
    text, c_face = model.encode_text([prompt, ""], torch.tensor([list(span), [-1, -1]]))
    cond = model.identity_context(text[:1], c_face[:1], ref)
    uncond = model.identity_context(text[1:], c_face[:1], ref)  # guidance on the text, identity kept
    pose_t = _image_tensor(pose, device)
    m = torch.from_numpy(mask.astype(np.float32))[None, None].to(device)
    m = F.interpolate(m, size=z_bg.shape[-2:], mode="area").clamp(0, 1)
    sched = _scheduler(model, cfg.steps)
    timesteps = sched.timesteps[int(round(cfg.steps * (1 - cfg.strength))):]
    noise = torch.randn(z_bg.shape, generator=generator).to(device)
    z = sched.add_noise(z_bg, noise, timesteps[:1])
    for i, t in enumerate(timesteps):
        eps = _guided(model, z, t.to(device), cond, uncond, pose_t, True, cfg)
        z_fg = sched.step(eps, t, z).prev_sample
        # the step leaves z at the next timestep, so the background is noised to that level
        z_bgt = sched.add_noise(z_bg, noise, timesteps[i + 1:i + 2]) if i + 1 < len(timesteps) else z_bg
        z = z_fg * m + z_bgt * (1 - m)
    return to_uint8(model.decode_latents(z))


def square_box(box: Iterable[float], shape: tuple[int, ...], margin: float) -> Box:
    """A square around ``box`` grown by ``margin`` per side, shifted (and if need be shrunk) to fit."""
    x0, y0, x1, y1 = box
    h, w = shape[:2]
    side = min(max(x1 - x0, y1 - y0) * (1 + 2 * margin), h, w)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    side = int(side)
    return left, top, left + side, top + side


def paste_back(base: np.ndarray, face: np.ndarray, box: Box, mask: np.ndarray | None, feather: float) -> np.ndarray:
    """``face`` resized into ``box`` of ``base``, blended through the feathered face mask."""
    x0, y0, x1, y1 = box
    size = (x1 - x0, y1 - y0)
    patch = cv2.resize(face, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    alpha = np.ones(face.shape[:2], np.float32) if mask is None else mask.astype(np.float32)
    alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_LINEAR)
    k = max(1, int(feather * size[0])) * 2 + 1
    alpha = cv2.GaussianBlur(cv2.dilate(alpha, np.ones((k // 2 + 1,) * 2, np.uint8)), (k, k), 0)[..., None]
    out = base.astype(np.float32)
    out[y0:y1, x0:x1] = alpha * patch + (1 - alpha) * out[y0:y1, x0:x1]
    return out.round().clip(0, 255).astype(np.uint8)


def generate(model: DenseFace, prompt: str, reference_embedding: np.ndarray,
             locate_face: Callable[[np.ndarray], Iterable[float]], pose_of: Callable[[np.ndarray], np.ndarray],
             mask_of: Callable[[np.ndarray], np.ndarray], subject: str | None = "person",
             cfg: InferenceConfig | None = None) -> dict[str, object]:
    """The two-mode generation: base image, face crop, repainted face, final image."""
    cfg = cfg or InferenceConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    model.eval()
    base = text_editing(model, prompt, cfg, gen)
    box = square_box(locate_face(base), base.shape, cfg.face_margin)
    crop = cv2.resize(base[box[1]:box[3], box[0]:box[2]], (cfg.resolution,) * 2, interpolation=cv2.INTER_AREA)
    pose, mask = pose_of(crop), (mask_of(crop) > 0).astype(np.float32)
    face_prompt, span = subject_span(prompt, subject, model.cfg.identity_word)
    new_face = face_generation(model, crop, reference_embedding, pose, mask, face_prompt, span, cfg, gen)
    result = paste_back(base, new_face, box, mask, cfg.feather)
    return {"base": base, "box": box, "face": crop, "new_face": new_face, "result": result}
