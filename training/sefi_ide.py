"""SeFi-IDE (Sec. 3): test-time identity embedding of one face into a frozen SD 1.4.

The identity is five per-stage tokens (the 1000 diffusion steps split evenly into five stages),
each a (K, V) pair from ``TokenExpander``; only that module trains (Adam, lr 0.005, ~1000 steps
on the single image). Per step a training prompt ("a photo of a face of {}", ...; Appendix 6.4)
is encoded twice with the stage's key / value token in the placeholder's slot, the UNet takes
keys and values from the two contexts, and the loss is (Eq. 3)

    L = ||eps - eps_theta(z_t, t, (P_i^K, P_i^V))||^2 + lambda * L_attention,

L_attention = MSE between every token's cross-attention maps for the target prompt and for the
reference prompt (the placeholder read as "person", same queries: Algorithm 1, option #3); with
``attention_target: face_mask`` the identity token's reference map is also cut to the face mask
from the shards, so its attention stays on the face. Augmentation (Appendix 6.4): colour jitter,
horizontal flip (p 0.5), random down-scaling. Resume is exact: every draw comes from (seed, step).
Each face gets its own run folder, ``<root_dir>/<key>/``; the learned tokens go to its
``tokens.pt`` (``infer_sefi_ide`` composes them into prompts).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from schemas.shard import IMAGE, META
from training.data import OPTIONAL, REQUIRED, decode_sample
from training.dense_face import DTYPES, OptimConfig
from training.module_base import TrainableParts
from training.pairs import PairConfig, PairIndex, load_index
from training.sd import SDComponents
from training.sefi_ide_blocks import KVState, TokenExpander, install_kv
from training.text_tokens import encode, fill, placeholder_positions

TRAINABLE = ("token_net",)
TOKENS_FILE = "tokens.pt"
PROMPTS = ["a photo of a face of {}", "a photo of a rendering of a face of {}", "a close-up photo of the face of {}",
           "a photo of the cool face of {}", "a rendition of the face of {}", "an illustration of a face of {}",
           "a depiction of a face of {}"]


@dataclass
class SeFiConfig:
    """Tokens, loss and augmentation (``model:`` in the YAML)."""

    stages: int = 5  # per-stage (K, V) tokens over the 1000 diffusion steps
    heads: int = 8  # heads of the token self-attention module
    placeholder: str = "person"  # the init word; also the reference prompt's reading of the identity slot
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))
    lambda_attention: float = 0.003
    attention_target: str = "face_mask"  # face_mask | reference (Algorithm 1 as written)
    hflip: float = 0.5
    jitter: float = 0.1  # colour jitter strength (brightness / contrast / saturation)
    scale_min: float = 0.1  # random scaling in [scale_min, 1]
    frozen_dtype: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0


@dataclass
class SeFiDataConfig:
    """The one reference face (``data:`` in the YAML)."""

    resolution: int = 512
    batch_size: int = 1  # augmented copies of the one face per step


def pick_reference(index: PairIndex, key: str | None, identity: str | None) -> int:
    """The row of ``key``, or of ``identity``'s sample with the most same-identity candidates."""
    if (key is None) == (identity is None):
        raise ValueError("sefi-ide learns one face: give exactly one of --key or --identity")
    if key is not None:
        return index.row(key)
    rows = np.flatnonzero((index.identity == str(identity)) & index.has(IMAGE))
    if not len(rows):
        raise KeyError(f"no sample of identity {identity!r} in {index.shards_dir}")
    counts = [len(index.candidate_rows(int(r))) for r in rows]
    return int(rows[int(np.argmax(counts))])  # ties: the first key


class OneFace(IterableDataset):
    """The same decoded sample forever (augmentation happens in the module, seeded by step)."""

    def __init__(self, sample: dict[str, Any], batch_size: int):
        self.sample, self.batch_size = sample, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batch = {k: v[None].expand(self.batch_size, *v.shape).clone() for k, v in self.sample.items()
                 if isinstance(v, torch.Tensor)}
        while True:
            yield batch


class OneFaceDataModule(L.LightningDataModule):
    """One shard sample, picked by key or identity; its state is the batches consumed."""

    def __init__(self, shards: str | Path, cfg: SeFiDataConfig, key: str | None = None, identity: str | None = None):
        super().__init__()
        self.shards, self.cfg, self.consumed = Path(shards), cfg, 0
        self.index = load_index(self.shards, PairConfig())
        row = pick_reference(self.index, key, identity)
        self.key = str(self.index.keys[row])
        members = [m for m in REQUIRED + OPTIONAL if self.index.has(m)[row]]
        missing = set(REQUIRED) - set(members)
        if missing:
            raise ValueError(f"{self.key} lacks {sorted(missing)} (run the landmarks stage)")
        raw = {m: self.index.read(row, m) for m in members}
        self.identity = str(json.loads(raw[META]).get("identity", self.index.identity[row]))
        sample = decode_sample(raw, cfg.resolution)
        self.sample = {k: sample[k] for k in ("image", "face_mask")}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(OneFace(self.sample, self.cfg.batch_size), batch_size=None, num_workers=0)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"consumed_batches": self.consumed, "key": self.key}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("key", self.key) != self.key:
            raise ValueError(f"the checkpoint learned {state['key']}, not {self.key}")
        self.consumed = int(state.get("consumed_batches", 0))


def augment(image: torch.Tensor, mask: torch.Tensor, cfg: SeFiConfig, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour jitter, flip and a random zoom-out (the face shrunk onto a grey canvas), per sample."""
    b, _, h, w = image.shape
    u = torch.rand(b, 6, generator=gen).to(image.device)
    x = (image + 1) / 2
    j = cfg.jitter
    x = x * (1 + j * (2 * u[:, 0] - 1)).view(b, 1, 1, 1)  # brightness
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + j * (2 * u[:, 1] - 1)).view(b, 1, 1, 1) + mean  # contrast
    grey = x.mean(1, keepdim=True)
    x = ((x - grey) * (1 + j * (2 * u[:, 2] - 1)).view(b, 1, 1, 1) + grey).clamp(0, 1)  # saturation
    flip = (u[:, 3] < cfg.hflip).view(b, 1, 1, 1)
    x, mask = torch.where(flip, x.flip(-1), x), torch.where(flip, mask.flip(-1), mask)
    out_x, out_m = torch.full_like(x, 0.5), torch.zeros_like(mask)
    for i in range(b):
        s = cfg.scale_min + (1 - cfg.scale_min) * float(u[i, 4])
        sh, sw = max(8, round(h * s)), max(8, round(w * s))
        top, left = int(float(u[i, 5]) * (h - sh)), int(float(u[i, 5]) * (w - sw))
        out_x[i, :, top:top + sh, left:left + sw] = F.interpolate(x[i:i + 1], size=(sh, sw), mode="area")[0]
        out_m[i, :, top:top + sh, left:left + sw] = F.interpolate(mask[i:i + 1].float(), size=(sh, sw), mode="area")[0]
    return out_x * 2 - 1, out_m


class SeFiIDE(TrainableParts):
    """SeFi-IDE on frozen SD components; checkpoints hold the token self-attention module only."""

    trainable_parts = TRAINABLE

    def __init__(self, sd: SDComponents, cfg: SeFiConfig, optim: OptimConfig | None = None):
        super().__init__()
        if cfg.attention_target not in ("face_mask", "reference") or cfg.stages < 1:
            raise ValueError("attention_target must be face_mask or reference, stages >= 1")
        self.cfg = cfg
        self.optim = optim or OptimConfig(lr=5e-3, weight_decay=0.0, scheduler="constant", warmup_steps=0)
        self.strict_loading = False
        torch.manual_seed(cfg.seed)
        self.unet, self.vae, self.text_encoder = sd.unet, sd.vae, sd.text_encoder
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False).eval()
            if m.dtype != DTYPES[cfg.frozen_dtype]:
                m.to(DTYPES[cfg.frozen_dtype])
        self.tokenizer, self.scheduler = sd.tokenizer, sd.scheduler
        self.n_text = min(sd.tokenizer.model_max_length, sd.text_encoder.config.max_position_embeddings)
        filled = [fill(p, cfg.placeholder) for p in cfg.prompts]
        ids, pos = placeholder_positions(self.tokenizer, [t for t, _ in filled], [s for _, s in filled], self.n_text)
        if (pos < 0).any():
            raise ValueError(f"placeholder {cfg.placeholder!r} must be one token in every prompt")
        self.register_buffer("prompt_ids", ids, persistent=False)
        self.register_buffer("prompt_pos", pos[:, 0], persistent=False)
        init = self.text_encoder.get_input_embeddings().weight[ids[0, pos[0, 0]]]
        heads = cfg.heads if init.numel() % cfg.heads == 0 else 1
        self.token_net = TokenExpander(init, cfg.stages, heads)
        self.state = KVState()
        self.n_cross = install_kv(self.unet, self.state)
        self.history: list[dict[str, float]] = []
        self.key, self.identity, self.run_name = "", "", ""
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def train(self, mode: bool = True) -> "SeFiIDE":
        super().train(mode)
        for m in (self.unet, self.vae, self.text_encoder):
            m.eval()
        return self

    def stage_of(self, t: torch.Tensor) -> torch.Tensor:
        n = self.scheduler.config.num_train_timesteps
        return (t.long() * self.cfg.stages // n).clamp(0, self.cfg.stages - 1)

    def contexts(self, ids: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value contexts (B, L, D) with (B, 2, D) ``tokens`` in the identity slot."""
        k = encode(self.text_encoder, ids, pos[:, None], tokens[:, :1])
        v = encode(self.text_encoder, ids, pos[:, None], tokens[:, 1:])
        return k, v

    def denoise(self, noisy: torch.Tensor, t: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                reference: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                id_pos: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s = self.state
        s.values, s.reference, s.target_mask, s.id_pos, s.losses = values, reference, mask, id_pos, []
        try:
            dtype = self.unet.dtype
            pred = self.unet(noisy.to(dtype), t, encoder_hidden_states=keys.to(dtype)).sample.float()
        finally:
            losses, s.values, s.reference, s.target_mask, s.losses = s.losses, None, None, None, []
        return pred, losses



    def training_step(self, batch: dict, batch_idx: int) -> dict:
        gen = self._generator(batch_idx)
        image, mask = augment(batch["image"], batch["face_mask"], self.cfg, gen)
        n = len(image)
        latents = self.encode_images(image, gen)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=gen).to(self.device)
        which = torch.randint(0, len(self.prompt_ids), (n,), generator=gen).to(self.device)
        ids, pos = self.prompt_ids[which], self.prompt_pos[which]
        tokens = self.token_net()[self.stage_of(t)]  # (B, 2, D): this stage's (P^K, P^V)
        keys, values = self.contexts(ids, pos, tokens)
        with torch.no_grad():
            reference = encode(self.text_encoder, ids)  # the placeholder read as "person"
        use_mask = mask if self.cfg.attention_target == "face_mask" else None
        pred, att = self.denoise(self.scheduler.add_noise(latents, noise, t), t, keys, values, reference, use_mask, pos)
        target = noise if self.scheduler.config.prediction_type == "epsilon" \
            else self.scheduler.get_velocity(latents, noise, t)
        terms = {"kv": F.mse_loss(pred, target), "attention": torch.stack(att).mean()}  # Eq. 2, Eq. 1
        loss = terms["kv"] + self.cfg.lambda_attention * terms["attention"]  # Eq. 3
        self.history.append({k: float(v.detach()) for k, v in terms.items()})
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=n)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        return {"loss": loss, "terms": terms}

    @torch.no_grad()
    def learned_tokens(self) -> dict[str, Any]:
        tokens = self.token_net().float().cpu()
        return {"k": tokens[:, 0], "v": tokens[:, 1], "stages": self.cfg.stages, "placeholder": self.cfg.placeholder,
                "num_train_timesteps": self.scheduler.config.num_train_timesteps, "key": self.key,
                "identity": self.identity, "config": asdict(self.cfg)}

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            torch.save(self.learned_tokens(), Path(self.trainer.default_root_dir) / TOKENS_FILE)

    def run_summary(self) -> dict[str, Any]:
        return {"key": self.key, "identity": self.identity, "history": self.history,
                "tokens": str(Path(self.trainer.default_root_dir) / TOKENS_FILE)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["sefi_ide"] = asdict(self.cfg)


def build(cfg: dict, shards: Path, base: str, key: str | None = None, identity: str | None = None
          ) -> tuple[SeFiIDE, OneFaceDataModule]:
    from training.sd import load_sd
    from training.train import make

    model_cfg = make(SeFiConfig, cfg.get("model"), "model")
    optim = make(OptimConfig, cfg.get("optim"), "optim")
    dm = OneFaceDataModule(shards, make(SeFiDataConfig, cfg.get("data"), "data"), key=key, identity=identity)
    module = SeFiIDE(load_sd(base), model_cfg, optim)
    module.key, module.identity = dm.key, dm.identity
    module.run_name = dm.key  # one run folder per learned face
    return module, dm

