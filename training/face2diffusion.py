"""Face2Diffusion (Sec. 3): frozen SD 1.4, frozen MSID encoder; only the mapping networks train.

* identity (Sec. 3.2): v_id = the frozen MSID encoder (``training.msid``) on the sample's own face,
  aligned to the ArcFace template at detect's five points;
* expression guidance (Sec. 3.3, Eq. 4): v_exp = the expression stage's 3DDFA-V2 coefficients
  (``expr.npy``), replaced with probability ``p_drop_exp`` by a learnable v~_exp (the vector
  inference uses); two mapping networks f_map^1, f_map^2 turn [v_id, v_exp] into the two word
  embeddings S* = [S1*, S2*] (Sec. 4.1), injected in "a photo of S*" as token embeddings;
* class-guided denoising regularisation (Sec. 3.4, Eq. 5-7): the prediction for the S* prompt is
  pulled to the added noise inside the face mask and to the (frozen, no-grad) prediction for the
  class prompt "a photo of a person" outside it.

Data: every sample with an image, landmarks and ``expr.npy`` reconstructs itself (no pairing),
horizontally flipped with probability 0.5 (the paper's only augmentation).
"""
from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from schemas.expression import EXPR_FILE, N_EXPRESSION
from training.data import FaceShardDataModule, PairedShardStream, decode_sample, make_caption
from training.dense_face import DTYPES, OptimConfig
from training.module_base import TrainableParts
from training.msid import MSIDConfig, MSIDEncoder, load_encoder
from training.portraitbooth_blocks import align_faces
from training.sd import SDComponents
from training.text_tokens import encode, fill, placeholder_positions

TRAINABLE = ("mapper",)
FLIP_POINTS = [1, 0, 2, 4, 3]  # five points after a horizontal flip: eyes and mouth corners swap


@dataclass
class F2DConfig:
    """Model and loss settings (``model:`` in the YAML)."""

    msid_checkpoint: str = ""  # an msid run's checkpoint; "": random weights (tests; outputs weights_random)
    msid_arch: str = "msid"  # shipped msid config whose model section builds the random encoder
    exp_dim: int = N_EXPRESSION  # expr.npy size (3DDFA-V2: 10)
    p_drop_exp: float = 0.2  # Eq. 4
    tokens: int = 2  # S* = [S1*, S2*], one mapping network each (Sec. 4.1)
    mlp_hidden: int = 0  # 0: the input size (v_id + v_exp), as the authors' code
    dropout: float = 0.1
    prompt: str = "a photo of {}"  # Eq. 5's p; {} becomes the identity tokens
    class_prompt: str = "a photo of a person"  # Eq. 6's p_c
    placeholder: str = "person"  # a one-token word whose token embeddings S* replaces
    cgdr: bool = True  # False: the plain reconstruction loss (Eq. 1), the paper's "Rec." ablation
    hflip: bool = True
    frozen_dtype: str = "fp32"  # VAE / text encoder / UNet weights
    gradient_checkpointing: bool = False
    seed: int = 0


class MappingMLP(nn.Module):
    """Two (linear, dropout, leaky ReLU) layers and a projection into the token-embedding space."""

    def __init__(self, n_in: int, hidden: int, n_out: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.Dropout(dropout), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Mapper(nn.Module):
    """[v_id, v_exp or v~_exp] -> (B, tokens, D) word embeddings S*."""

    def __init__(self, id_dim: int, exp_dim: int, token_dim: int, cfg: F2DConfig):
        super().__init__()
        hidden = cfg.mlp_hidden or id_dim + exp_dim
        self.maps = nn.ModuleList(MappingMLP(id_dim + exp_dim, hidden, token_dim, cfg.dropout) for _ in range(cfg.tokens))
        self.null_exp = nn.Parameter(torch.zeros(exp_dim))  # v~_exp

    def forward(self, v_id: torch.Tensor, v_exp: torch.Tensor | None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep`` (B,) bool: where v_exp is used; elsewhere (and for ``v_exp=None``) v~_exp."""
        null = self.null_exp.expand(len(v_id), -1)
        if v_exp is None:
            exp = null
        else:
            exp = torch.where(keep[:, None], v_exp.float(), null) if keep is not None else v_exp.float()
        x = torch.cat([v_id.float(), exp], 1)
        return torch.stack([m(x) for m in self.maps], 1)


def flip_batch(batch: dict, flip: torch.Tensor) -> dict:
    """Mirror the chosen samples' image, face mask and five points (eyes / mouth corners swapped)."""
    if not flip.any():
        return batch
    out = dict(batch)
    f4 = flip.view(-1, 1, 1, 1).to(batch["image"].device)
    out["image"] = torch.where(f4, batch["image"].flip(-1), batch["image"])
    out["face_mask"] = torch.where(f4, batch["face_mask"].flip(-1), batch["face_mask"])
    width = batch["image"].shape[-1]
    pts = batch["points5"].clone()
    mirrored = pts[:, FLIP_POINTS].clone()
    mirrored[..., 0] = width - 1 - mirrored[..., 0]
    out["points5"] = torch.where(flip.view(-1, 1, 1).to(pts.device), mirrored, pts)
    return out


class Face2Diffusion(TrainableParts):
    """F2D on frozen SD components; checkpoints hold the mapping networks (and v~_exp) only."""

    trainable_parts = TRAINABLE

    def __init__(self, sd: SDComponents, cfg: F2DConfig, optim: OptimConfig | None = None,
                 msid: MSIDEncoder | None = None):
        super().__init__()
        if not 0 <= cfg.p_drop_exp <= 1 or cfg.tokens < 1:
            raise ValueError("p_drop_exp must be in [0, 1] and tokens >= 1")
        self.cfg, self.optim = cfg, optim or OptimConfig(lr=1e-5, scheduler="constant", warmup_steps=0)
        self.strict_loading = False
        torch.manual_seed(cfg.seed)
        self.msid = msid if msid is not None else random_msid(cfg)
        self.weights_random = msid is None and not cfg.msid_checkpoint
        self.unet, self.vae, self.text_encoder = sd.unet, sd.vae, sd.text_encoder
        for m in (self.unet, self.vae, self.text_encoder, self.msid):
            m.requires_grad_(False).eval()
        for m in (self.unet, self.vae, self.text_encoder):
            if m.dtype != DTYPES[cfg.frozen_dtype]:
                m.to(DTYPES[cfg.frozen_dtype])
        self.tokenizer, self.scheduler = sd.tokenizer, sd.scheduler
        self.n_text = min(sd.tokenizer.model_max_length, sd.text_encoder.config.max_position_embeddings)
        token_dim = self.text_encoder.get_input_embeddings().embedding_dim
        self.mapper = Mapper(self.msid.out_dim, cfg.exp_dim, token_dim, cfg)
        prompt, spans = fill(cfg.prompt, cfg.placeholder, cfg.tokens)
        ids, pos = placeholder_positions(self.tokenizer, [prompt, cfg.class_prompt], [spans, []], self.n_text)
        if (pos[0] < 0).any() or len(set(pos[0].tolist())) != cfg.tokens:
            raise ValueError(f"placeholder {cfg.placeholder!r} must be one token each in {prompt!r}")
        self.register_buffer("prompt_ids", ids[:1], persistent=False)
        self.register_buffer("prompt_pos", pos[:1], persistent=False)
        self.register_buffer("class_ids", ids[1:], persistent=False)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def train(self, mode: bool = True) -> "Face2Diffusion":
        super().train(mode)
        for m in (self.unet, self.vae, self.text_encoder, self.msid):
            m.eval()
        return self

    # -- building blocks shared by training and inference ---------------------------------------

    @torch.no_grad()
    def identity_vector(self, faces: torch.Tensor) -> torch.Tensor:
        """v_id of (B, 3, 112, 112) ArcFace-aligned faces in [-1, 1]."""
        return self.msid(faces.to(self.device).float())

    def word_embeddings(self, v_id: torch.Tensor, v_exp: torch.Tensor | None, keep: torch.Tensor | None = None
                        ) -> torch.Tensor:
        return self.mapper(v_id, v_exp, keep)

    def prompt_context(self, s_star: torch.Tensor, ids: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None) -> torch.Tensor:
        """The frozen encoder's context for a prompt (default: the training template) with S* in."""
        n = len(s_star)
        ids = (self.prompt_ids if ids is None else ids).expand(n, -1)
        positions = (self.prompt_pos if positions is None else positions).expand(n, -1)
        return encode(self.text_encoder, ids, positions, s_star)

    @torch.no_grad()
    def class_context(self, n: int) -> torch.Tensor:
        return encode(self.text_encoder, self.class_ids.expand(n, -1))

    def denoise(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy.to(self.unet.dtype), t, encoder_hidden_states=context.to(self.unet.dtype)).sample.float()


    # -- training ----------------------------------------------------------------------------------


    def training_step(self, batch: dict, batch_idx: int) -> dict:
        gen = self._generator(batch_idx)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))  # the mappers' dropout, also on resume
        n = len(batch["image"])
        flip = (torch.rand(n, generator=gen) < 0.5) & self.cfg.hflip
        keep = torch.rand(n, generator=gen) >= self.cfg.p_drop_exp
        batch = flip_batch(batch, flip)
        latents = self.encode_images(batch["image"], gen)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=gen).to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        faces = align_faces(batch["image"].float(), batch["points5"].float())
        s_star = self.word_embeddings(self.identity_vector(faces), batch["expression"], keep.to(self.device))
        pred = self.denoise(noisy, t, self.prompt_context(s_star))
        target = noise if self.scheduler.config.prediction_type == "epsilon" \
            else self.scheduler.get_velocity(latents, noise, t)
        m = F.interpolate(batch["face_mask"].float().to(pred.device), size=pred.shape[-2:], mode="area")
        if self.cfg.cgdr:
            with torch.no_grad():
                pred_c = self.denoise(noisy, t, self.class_context(n))
            goal = target * m + pred_c * (1 - m)  # Eq. 7
        else:
            goal = target
        err = (pred - goal) ** 2
        area = m.expand_as(err)
        terms = {"face": (err * area).sum() / area.sum().clamp_min(1e-6),  # inside M: denoising
                 "background": (err * (1 - area)).sum() / (1 - area).sum().clamp_min(1e-6)}  # outside: class-guided
        loss = err.mean()
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=n)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        return {"loss": loss, "terms": terms}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["face2diffusion"] = asdict(self.cfg)
        checkpoint["weights_random"] = self.weights_random

    def run_summary(self) -> dict[str, Any]:
        return {"weights_random": self.weights_random}


def random_msid(cfg: F2DConfig) -> MSIDEncoder:
    """An MSID encoder of the ``msid_arch`` config's architecture, from the checkpoint when set."""
    if cfg.msid_checkpoint:
        return load_encoder(cfg.msid_checkpoint)
    from training.train import load_config, make

    arch = make(MSIDConfig, load_config(cfg.msid_arch).get("model"), "model")
    torch.manual_seed(cfg.seed)
    return MSIDEncoder(arch).eval()


class OwnImageStream(PairedShardStream):
    """Samples that reconstruct themselves: image + annotations + expr.npy, no reference needed."""

    def __init__(self, index, cfg, start_batch: int = 0):
        super().__init__(index, cfg, start_batch)
        ok = np.ones(len(index.keys), bool)
        for member in self.required + (EXPR_FILE,):
            ok &= index.has(member)
        self.target_ok = ok
        self.shard_counts = np.bincount(index.shard_of[ok], minlength=len(index.shard_names))
        self.wanted = self.wanted | {EXPR_FILE}

    def _decode(self, raw: dict) -> dict[str, Any]:
        rng = random.Random(f"{self.cfg.seed}:{raw['__epoch__']}:{raw['__key__']}")
        sample = decode_sample(raw, self.cfg.resolution, self.cfg.require_pose)
        meta = sample.pop("meta")
        sample["identity"] = (meta.get("source") or {}).get("identity", "")
        sample["expression"] = torch.from_numpy(np.load(io.BytesIO(raw[EXPR_FILE])).astype(np.float32))
        sample["caption"], sample["id_span"] = make_caption(meta, rng, self.cfg)
        return sample


class OwnImageDataModule(FaceShardDataModule):
    """``FaceShardDataModule`` over ``OwnImageStream`` (same resumable state)."""

    def stream(self) -> OwnImageStream:
        self.setup()
        return OwnImageStream(self.index, self.cfg, start_batch=self.consumed)


def build(cfg: dict, shards: Path, base: str) -> tuple[Face2Diffusion, OwnImageDataModule]:
    from training.sd import load_sd
    from training.train import data_config, make

    model_cfg = make(F2DConfig, cfg.get("model"), "model")
    optim = make(OptimConfig, cfg.get("optim"), "optim")
    dm = OwnImageDataModule(shards, data_config(cfg, model_cfg.placeholder))
    dm.prepare_data()
    dm.setup()
    rows = np.flatnonzero(dm.index.has(EXPR_FILE))
    if not len(rows):
        raise ValueError(f"no expression coefficients ({EXPR_FILE}) in {shards}: run the expression stage")
    dim = int(np.load(io.BytesIO(dm.index.read(int(rows[0]), EXPR_FILE))).shape[0])
    if dim != model_cfg.exp_dim:
        raise ValueError(f"model.exp_dim is {model_cfg.exp_dim} but the shards' {EXPR_FILE} has {dim} values")
    return Face2Diffusion(load_sd(base), model_cfg, optim), dm
