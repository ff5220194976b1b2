"""PortraitBooth inference: one reference photo and a prompt -> an image (Sec. 5.1: Euler, 50 steps,
classifier-free guidance 5).

The reference's face is found with a registered RetinaFace (mobile0.25 is bundled), aligned to the
ArcFace template (``stages.models.align``) and turned into the face feature the model was trained with:
the identity stage's embedding (re-embedded with the same network, ``model.cfg.embedder``), or the
frozen recogniser's embedding / shallow features. The prompt's first subject word ("man", "woman",
"person") is the identity token; the unconditional branch is the empty prompt, as in training.

    python -m training.infer_portraitbooth --base runwayml/stable-diffusion-v1-5 \\
        --checkpoint runs/portraitbooth/checkpoints/final.ckpt --reference me.jpg \\
        --prompt "a photo of a happy man on the beach" --out out.png
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler

from stages.models import align, load, retinaface
from training.portraitbooth import PortraitBooth, PortraitBoothConfig
from training.portraitbooth_blocks import FACE_SIZE, FaceEmbedder
from training.infer_common import guided_latents, inference_parser, parse_inference, read_rgb, to_uint8, write_rgb
from training.sd import load_sd

NO_SPAN = [-1, -1]


@dataclass
class InferenceConfig:
    steps: int = 50  # Euler steps
    guidance_scale: float = 5.0
    resolution: int = 512
    seed: int = 0
    subject_words: tuple[str, ...] = ("man", "woman", "person")
    detector: str = "retinaface_mobile0.25"
    conf_threshold: float = 0.8
    weights_dir: str = ""


def load_model(base: str, checkpoint: str | Path, config: str | Path = "portraitbooth",
               overrides: Iterable[str] = ()) -> PortraitBooth:
    """Frozen parts from ``base``, UNet and subject MLP from a training checkpoint.

    The model settings are the ones the checkpoint was trained with; ``config`` is only read for
    checkpoints that do not record them.
    """
    from training.train import load_config, make

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    values = ckpt.get("portraitbooth") or load_config(config, overrides).get("model")
    model = PortraitBooth(load_sd(base), make(PortraitBoothConfig, values, "model"))
    model.load_trainable(ckpt["state_dict"])
    return model.eval()


def subject_span(prompt: str, words: Iterable[str]) -> list[int]:
    """[start, end) of the prompt's first subject word (whole word, any case), [-1, -1] without one."""
    pattern = r"\b(" + "|".join(re.escape(w) for w in words) + r")\b"
    m = re.search(pattern, prompt, flags=re.IGNORECASE)
    return [m.start(), m.end()] if m else list(NO_SPAN)


class ReferenceEncoder:
    """Reference photo -> ``ref_face`` (ArcFace-aligned, [-1, 1]) and ``ref_embedding`` as in training."""

    def __init__(self, model: PortraitBooth, cfg: InferenceConfig):
        self.cfg, root = cfg, cfg.weights_dir or None
        self.detector = load(cfg.detector, root)
        self.embedder: torch.nn.Module | None = None
        if model.cfg.face_feature == "embedding":
            name = model.cfg.embedder or model.cfg.id_net
            self.embedder = model.id_net if name == model.cfg.id_net else FaceEmbedder(name, "pretrained", root)
        self.device = model.device

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> dict[str, torch.Tensor | None]:
        dets = retinaface.detect(self.detector, [image], score_floor=self.cfg.conf_threshold)[0]
        if not len(dets):
            raise ValueError("no face found in the reference image")
        main = dets[int(np.argmax((dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])))]
        face, _ = align.align(np.ascontiguousarray(image), main[5:15], align.ARCFACE_112, FACE_SIZE)
        ref_face = (torch.from_numpy(face).permute(2, 0, 1)[None].float() / 127.5 - 1).to(self.device)
        emb = None if self.embedder is None else self.embedder.to(self.device)(ref_face)
        return {"ref_face": ref_face, "ref_embedding": emb, "box": torch.from_numpy(main[:4])}


@torch.no_grad()
def generate(model: PortraitBooth, reference: np.ndarray, prompt: str, cfg: InferenceConfig | None = None,
             encoder: ReferenceEncoder | None = None) -> np.ndarray:
    """An RGB uint8 image of the reference's person as the prompt describes."""
    cfg = cfg or InferenceConfig()
    span = subject_span(prompt, cfg.subject_words)
    if span[0] < 0:
        raise ValueError(f"the prompt names no subject word {cfg.subject_words}: the identity has no token")
    model.eval()
    ref = (encoder or ReferenceEncoder(model, cfg))(reference)
    device = model.device
    text, pos = model.encode_text([prompt, ""], torch.tensor([span, NO_SPAN]), torch.tensor([NO_SPAN, NO_SPAN]))
    face = model.face_features(ref["ref_embedding"], ref["ref_face"])
    cond = model.condition(text[:1], pos[:1, 0], face, torch.ones(1, dtype=torch.bool, device=device))
    context = torch.cat([text[1:].float(), cond])
    sched = EulerDiscreteScheduler.from_config(model.scheduler.config)
    z = guided_latents(sched, cfg, model.unet.config.in_channels, len(model.vae.config.block_out_channels), device,
                       lambda z_in, t: model.denoise(z_in, t, context)[0].chunk(2))
    return to_uint8(model.decode_latents(z))


def main(argv: list[str] | None = None) -> None:
    ap = inference_parser(__doc__, "1.5", reference=True,
                          prompt_help="text naming the person with one of the subject words (man, woman, person)")
    ap.add_argument("--checkpoint", required=True)
    args, cfg = parse_inference(ap, argv, InferenceConfig, skip=("subject_words",))
    model = load_model(args.base, args.checkpoint).to(args.device)
    write_rgb(args.out, generate(model, read_rgb(args.reference), args.prompt, cfg))


if __name__ == "__main__":
    main()
