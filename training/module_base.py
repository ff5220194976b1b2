"""What every trainer LightningModule shares: its trainable parts, their checkpoints, the optimiser."""
from __future__ import annotations

from typing import ClassVar

import lightning as L
import torch
from diffusers.optimization import get_scheduler
from torch import nn


class TrainableParts(L.LightningModule):
    """A module whose checkpoints hold only the attributes named in ``trainable_parts``.

    Subclasses set ``self.optim`` (an ``OptimConfig``) and the ``vae`` of their frozen SD.
    """

    trainable_parts: ClassVar[tuple[str, ...]] = ()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name in self.trainable_parts for p in getattr(self, name).parameters()]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name in self.trainable_parts
                for k, v in getattr(self, name).state_dict().items()}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's trainable weights; every trainable tensor must be in it."""
        missing = set(self.trainable_state_dict()) - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[:3]}")
        self.load_state_dict(state, strict=False)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return (dist.sample(generator) * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()

    def _generator(self, batch_idx: int) -> torch.Generator:
        """Randomness from (seed, step) alone, so a resumed run draws what an unbroken one would.

        Subclasses keep the seed in ``self.cfg.seed``."""
        accumulate = self.trainer.accumulate_grad_batches if self._trainer else 1
        step = self.global_step * accumulate + batch_idx % accumulate
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)

    def configure_optimizers(self) -> dict:
        o = self.optim
        opt = torch.optim.AdamW(self.trainable_parameters(), lr=o.lr, betas=tuple(o.betas),
                                weight_decay=o.weight_decay)
        sched = get_scheduler(o.scheduler, opt, num_warmup_steps=o.warmup_steps, num_training_steps=o.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict()
