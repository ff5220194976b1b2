"""SeFi-IDE inference: learned per-stage tokens composed into a prompt -> an image (Appendix 6.5:
DDIM, 50 steps, guidance 7.5).

``{}`` in the prompt marks the identity. At each denoising step the stage of its timestep picks
the (P_i^K, P_i^V) pair: the UNet's cross-attention keys come from the prompt encoded with P_i^K,
its values from the prompt encoded with P_i^V; the unconditional branch is the empty prompt.

    python -m training.infer_sefi_ide --base CompVis/stable-diffusion-v1-4 \\
        --tokens OUT/runs/sefi_ide/tokens.pt --prompt "a photo of {} playing guitar" --out out.png
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler

from training.infer_common import guided_latents, inference_parser, parse_inference, to_uint8, write_rgb
from training.sd import SDComponents, load_sd
from training.sefi_ide_blocks import KVState, install_kv
from training.text_tokens import encode, fill, placeholder_positions


@dataclass
class InferenceConfig:
    steps: int = 50  # DDIM steps
    guidance_scale: float = 7.5
    resolution: int = 512
    seed: int = 0


class Composer:
    """Frozen SD with the (K, V) processors installed and one identity's tokens."""

    def __init__(self, sd: SDComponents, tokens: dict, device: str | torch.device = "cpu"):
        self.sd, self.device = sd, torch.device(device)
        for m in (sd.unet, sd.vae, sd.text_encoder):
            m.to(self.device).eval().requires_grad_(False)
        self.k, self.v = tokens["k"].float(), tokens["v"].float()
        self.stages, self.placeholder = int(tokens["stages"]), str(tokens["placeholder"])
        self.n_train = int(tokens.get("num_train_timesteps", sd.scheduler.config.num_train_timesteps))
        self.state = KVState()
        install_kv(sd.unet, self.state)
        self.n_text = min(sd.tokenizer.model_max_length, sd.text_encoder.config.max_position_embeddings)

    @torch.no_grad()
    def stage_contexts(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(stages, L, D) key contexts and value contexts of ``prompt``."""
        text, spans = fill(prompt, self.placeholder)
        ids, pos = placeholder_positions(self.sd.tokenizer, [text], [spans], self.n_text)
        if (pos < 0).any():
            raise ValueError(f"the prompt is too long: the identity token of {prompt!r} was truncated")
        ids, pos = ids.expand(self.stages, -1), pos.expand(self.stages, -1)
        enc = self.sd.text_encoder
        return (encode(enc, ids, pos, self.k[:, None].to(self.device)),
                encode(enc, ids, pos, self.v[:, None].to(self.device)))

    def stage_of(self, t: torch.Tensor | int) -> int:
        return min(int(t) * self.stages // self.n_train, self.stages - 1)

    @torch.no_grad()
    def generate(self, prompt: str, cfg: InferenceConfig | None = None) -> np.ndarray:
        cfg = cfg or InferenceConfig()
        keys, values = self.stage_contexts(prompt)
        empty = self.sd.tokenizer([""], padding="max_length", max_length=self.n_text, return_tensors="pt").input_ids
        uncond = self.sd.text_encoder(empty.to(self.device))[0]
        unet, vae = self.sd.unet, self.sd.vae

        def eps(z_in: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            i = self.stage_of(t)  # this timestep's stage: its (K, V) token pair
            self.state.values = torch.cat([uncond, values[i:i + 1]]).to(unet.dtype)
            try:
                ctx = torch.cat([uncond, keys[i:i + 1]]).to(unet.dtype)
                return unet(z_in.to(unet.dtype), t, encoder_hidden_states=ctx).sample.float().chunk(2)
            finally:
                self.state.values = None

        z = guided_latents(DDIMScheduler.from_config(self.sd.scheduler.config), cfg, unet.config.in_channels,
                           len(vae.config.block_out_channels), self.device, eps)
        image = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample.float()
        return to_uint8(image)


def load(base: str, tokens: str | Path, device: str = "cpu") -> Composer:
    data = torch.load(tokens, map_location="cpu", weights_only=False)
    if not {"k", "v", "stages", "placeholder"} <= set(data):
        raise ValueError(f"{tokens} is not a sefi-ide tokens file")
    return Composer(load_sd(base), data, device)


def main(argv: list[str] | None = None) -> None:
    ap = inference_parser(__doc__, "1.4")
    ap.add_argument("--tokens", required=True, help="tokens.pt of a sefi-ide run")
    args, cfg = parse_inference(ap, argv, InferenceConfig)
    write_rgb(args.out, load(args.base, args.tokens, args.device).generate(args.prompt, cfg))


if __name__ == "__main__":
    main()
