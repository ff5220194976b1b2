"""Dense-Face (Sec. 3.2-3.5): frozen SD 2.1 plus four trainable parts.

* pose branch: a copy of the UNet's first half (conv_in, time embedding, down and mid blocks)
  fed the pose image; its features are added to the UNet's skip connections, no zero-convolution;
* identity MLP (Eq. 4): c' = lambda * MLP(c_id) + c^Face, appended to the text context as extra tokens;
  c^Face is the pre-trained word embedding of "face" (``c_face: word_embedding``, the paper's form) or
  the text encoder's contextual output at the caption's identity word (``contextual``);
* PC-adapter (Eq. 6): residual q/k/v projections on every UNet cross-attention, only in
  face-generation mode (the context carries identity tokens); k/v residuals act on the identity
  tokens (``pc_scope: identity``) or on the whole context (``all``);
* annotation head (Eq. 7): the UNet decoder's block outputs, upsampled and concatenated, into
  three conv blocks predicting landmark heatmaps, pseudo-mask logits and depth; their losses
  (``training.dense_losses``) are per-map sums as Eq. 8 writes them, or per-pixel means.

Text-editing mode (``face_mode=False``) is exactly the frozen SD.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from schemas import pseudo_mask
from training.dense_losses import REDUCTIONS, dense_terms
from training.heatmaps import dense_targets, landmark_subset
from training.module_base import TrainableParts
from training.sd import SDComponents, attention_begin, attention_end

TRAINABLE = ("pose_branch", "id_mlp", "pc_adapter", "head")
C_FACE = ("word_embedding", "contextual")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DenseFaceConfig:
    """Model and loss settings (``model:`` in the YAML)."""

    dense_size: int = 128
    landmark_subset: str = "all"
    heatmap_sigma: float = 1.5  # in cells of the dense map
    identity_word: str = "face"
    c_face: str = "word_embedding"  # c^Face of Eq. 4: word_embedding (paper) | contextual (caption's encoding)
    id_dim: int = 0  # identity embedding size; 0: taken from the data
    id_scale: float = 1e-2  # lambda of Eq. 4
    id_tokens: int = 1
    id_hidden: int = 1024
    pc_scope: str = "identity"
    pc_rank: int = 0  # 0: full-rank residual projections
    head_channels: int = 128
    dense_reduction: str = "map_sum"  # map_sum (Eq. 8: squared L2 per map) | mean (per pixel)
    # ours (the paper gives none): each term's trivial-predictor floor at 128^2 (zero heatmaps 7.1,
    # class-prior mask 0.76, per-image mean depth 1.6e3; docs/training.md) weighted to ~0.15, SD's noise MSE
    lambda_landmarks: float = 0.02
    lambda_mask: float = 0.2
    lambda_depth: float = 1e-4
    frozen_dtype: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0


@dataclass
class OptimConfig:
    """Optimiser and schedule (``optim:`` in the YAML)."""

    lr: float = 5e-6
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "constant_with_warmup"
    warmup_steps: int = 500
    total_steps: int = 100_000


@dataclass(frozen=True)
class Gate:
    """When the PC-adapter acts: a context longer than the text (identity tokens appended) means
    face-generation mode. Read from the inputs, not from a flag, so that gradient-checkpointing
    recomputation in the backward pass takes the same path as the forward pass."""

    text_tokens: int
    id_tokens: int = 1
    scope: str = "identity"


def _residual(n_in: int, n_out: int, rank: int) -> nn.Module:
    if rank <= 0:
        layer = nn.Linear(n_in, n_out, bias=False)
        nn.init.zeros_(layer.weight)  # face mode starts as SD: the residual grows from zero
        return layer
    up = nn.Linear(rank, n_out, bias=False)
    nn.init.zeros_(up.weight)
    return nn.Sequential(nn.Linear(n_in, rank, bias=False), up)


class PCAdapterProcessor(nn.Module):
    """Cross-attention with residual q/k/v weights (Eq. 6), active only in face-generation mode."""

    def __init__(self, attn: Attention, gate: Gate, rank: int = 0):
        super().__init__()
        self.gate, self.base = gate, AttnProcessor2_0()
        self.to_q_res = _residual(attn.to_q.in_features, attn.to_q.out_features, rank)
        self.to_k_res = _residual(attn.to_k.in_features, attn.to_k.out_features, rank)
        self.to_v_res = _residual(attn.to_v.in_features, attn.to_v.out_features, rank)

    @staticmethod
    def _res(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight = next(layer.parameters())
        return layer(x.to(weight.dtype)).to(x.dtype)

    def forward(self, attn: Attention, hidden_states: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                temb: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= self.gate.text_tokens:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        hidden_states, residual, shape = attention_begin(attn, hidden_states, temb)
        ctx = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        b, n_ctx = ctx.shape[0], ctx.shape[1]
        q = attn.to_q(hidden_states) + self._res(self.to_q_res, hidden_states)
        n = n_ctx - self.gate.text_tokens if self.gate.scope == "identity" else n_ctx
        k, v = attn.to_k(ctx), attn.to_v(ctx)
        k = torch.cat([k[:, : n_ctx - n], k[:, n_ctx - n:] + self._res(self.to_k_res, ctx[:, n_ctx - n:])], 1)
        v = torch.cat([v[:, : n_ctx - n], v[:, n_ctx - n:] + self._res(self.to_v_res, ctx[:, n_ctx - n:])], 1)
        heads, head_dim = attn.heads, k.shape[-1] // attn.heads
        q, k, v = (x.view(b, -1, heads, head_dim).transpose(1, 2) for x in (q, k, v))
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n_ctx, b).view(b, heads, -1, n_ctx)
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(b, -1, heads * head_dim).to(q.dtype)
        return attention_end(attn, out, residual, shape)


def install_pc_adapter(unet: nn.Module, gate: Gate, rank: int) -> nn.ModuleList:
    """Give every cross-attention a PC-adapter processor; returns them in name order."""
    processors, adapters = {}, []
    for name, proc in unet.attn_processors.items():
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention:
            proc = PCAdapterProcessor(attn, gate, rank)
            adapters.append(proc)
        processors[name] = proc
    unet.set_attn_processor(processors)
    return nn.ModuleList(adapters)


def build_pose_branch(unet: nn.Module) -> ControlNetModel:
    """ControlNet-style copy of the UNet encoder with the zero-convolutions taken out."""
    branch = ControlNetModel.from_unet(unet).float()
    branch.controlnet_down_blocks = nn.ModuleList(nn.Identity() for _ in branch.controlnet_down_blocks)
    branch.controlnet_mid_block = nn.Identity()
    branch.controlnet_cond_embedding.conv_out.reset_parameters()
    return branch


class IdentityMLP(nn.Module):
    """Face embedding -> ``tokens`` vectors in the text-embedding space."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, tokens: int):
        super().__init__()
        self.tokens, self.out_dim = tokens, out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, out_dim * tokens))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding).view(-1, self.tokens, self.out_dim)


class _ConvBlock(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int):
        super().__init__()
        groups = math.gcd(32, hidden)
        self.inp = nn.Sequential(nn.Conv2d(n_in, hidden, 3, padding=1), nn.GroupNorm(groups, hidden), nn.SiLU())
        self.out = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.GroupNorm(groups, hidden), nn.SiLU(),
                                 nn.Conv2d(hidden, n_out, 1))

    def forward(self, x: torch.Tensor, size: int) -> torch.Tensor:
        x = self.inp(x)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.out(x)


class AnnotationHead(nn.Module):
    """Upsampled, concatenated decoder features -> (heatmaps, mask logits, depth in [0, 1])."""

    def __init__(self, n_in: int, hidden: int, n_landmarks: int, n_classes: int):
        super().__init__()
        self.landmarks = _ConvBlock(n_in, hidden, n_landmarks)
        self.mask = _ConvBlock(n_in, hidden, n_classes)
        self.depth = _ConvBlock(n_in, hidden, 1)

    def forward(self, features: list[torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        top = max(f.shape[-1] for f in features)
        x = torch.cat([f if f.shape[-1] == top else F.interpolate(f, size=(top, top), mode="bilinear",
                                                                  align_corners=False) for f in features], 1)
        x = x.to(next(self.parameters()).dtype)
        return self.landmarks(x, size), self.mask(x, size), torch.sigmoid(self.depth(x, size))


def identity_positions(offsets: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Per caption, the last token overlapping its identity-word span; -1 when none (or truncated)."""
    starts, ends = offsets[..., 0], offsets[..., 1]
    s, e = spans[:, :1].to(starts), spans[:, 1:].to(starts)
    hit = (ends > starts) & (starts < e) & (ends > s) & (s >= 0)
    idx = torch.arange(offsets.shape[1]).expand_as(starts)
    return torch.where(hit, idx, torch.full_like(idx, -1)).amax(1)


class DenseFace(TrainableParts):
    """Dense-Face on frozen SD components; checkpoints hold the trainable parts only."""

    trainable_parts = TRAINABLE

    def __init__(self, sd: SDComponents, cfg: DenseFaceConfig, optim: OptimConfig | None = None):
        super().__init__()
        if cfg.id_dim <= 0:
            raise ValueError("id_dim must be set (the identity embedding size of the shards)")
        self.cfg, self.optim = cfg, optim or OptimConfig()
        self.strict_loading = False  # checkpoints leave the frozen SD weights out
        torch.manual_seed(cfg.seed)
        self.pose_branch = build_pose_branch(sd.unet)
        frozen = DTYPES[cfg.frozen_dtype]
        self.unet, self.vae, self.text_encoder = sd.unet, sd.vae, sd.text_encoder
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False).eval()
            if m.dtype != frozen:
                m.to(frozen)
        self.tokenizer, self.scheduler, self.vae_factor = sd.tokenizer, sd.scheduler, sd.vae_factor
        if cfg.pc_scope not in ("identity", "all"):
            raise ValueError(f"pc_scope must be identity or all, got {cfg.pc_scope!r}")
        if cfg.c_face not in C_FACE or cfg.dense_reduction not in REDUCTIONS:
            raise ValueError(f"c_face must be one of {C_FACE} and dense_reduction one of {REDUCTIONS}")
        n_text = min(sd.tokenizer.model_max_length, sd.text_encoder.config.max_position_embeddings)
        self.gate = Gate(n_text, cfg.id_tokens, cfg.pc_scope)
        self.pc_adapter = install_pc_adapter(self.unet, self.gate, cfg.pc_rank)
        self.id_mlp = IdentityMLP(cfg.id_dim, self.unet.config.cross_attention_dim, cfg.id_hidden, cfg.id_tokens)
        channels = sum(block.resnets[-1].out_channels for block in self.unet.up_blocks)
        self.register_buffer("subset", torch.from_numpy(landmark_subset(cfg.landmark_subset)), persistent=False)
        self.head = AnnotationHead(channels, cfg.head_channels, len(self.subset), len(pseudo_mask.NAMES))
        self._features: list[torch.Tensor] = []
        self._capture = False
        for block in self.unet.up_blocks:
            block.register_forward_hook(self._keep_output)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.pose_branch.enable_gradient_checkpointing()

    def _keep_output(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if self._capture:
            self._features.append(output)

    def train(self, mode: bool = True) -> "DenseFace":
        super().train(mode)
        for m in (self.unet, self.vae, self.text_encoder):
            m.eval()
        return self

    # -- building blocks shared by training and inference ---------------------------------------


    @torch.no_grad()
    def word_embedding(self, word: str) -> torch.Tensor:
        """(D,) the text encoder's input embedding of ``word`` (the mean of its tokens' rows)."""
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        table = self.text_encoder.get_input_embeddings()
        return table(torch.tensor(ids, device=table.weight.device)).float().mean(0)

    @torch.no_grad()
    def encode_text(self, captions: list[str], spans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen text context (B, L, D) and c^Face (B, D): the identity word's pre-trained word
        embedding (``c_face: word_embedding``), or its contextual encoding in the caption (the word
        encoded alone when a caption has none)."""
        if self.cfg.c_face == "word_embedding":
            tok = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.gate.text_tokens,
                                 return_tensors="pt")
            hidden = self.text_encoder(tok.input_ids.to(self.device))[0]
            face = self.word_embedding(self.cfg.identity_word).to(hidden)
            return hidden, face.expand(len(captions), -1)
        tok = self.tokenizer(captions + [self.cfg.identity_word], padding="max_length", truncation=True,
                             max_length=self.gate.text_tokens, return_offsets_mapping=True,
                             return_tensors="pt")
        hidden = self.text_encoder(tok.input_ids.to(self.device))[0]
        spans = torch.cat([spans.cpu(), torch.tensor([[0, len(self.cfg.identity_word)]])])
        pos = identity_positions(tok.offset_mapping, spans).to(hidden.device)
        face = hidden[torch.arange(len(pos), device=hidden.device), pos.clamp(min=0)]
        face = torch.where((pos[:-1] >= 0)[:, None], face[:-1], face[-1:])
        return hidden[:-1], face

    def identity_context(self, text: torch.Tensor, face: torch.Tensor, id_embedding: torch.Tensor) -> torch.Tensor:
        """Eq. 4: c' = lambda * MLP(c_id) + c_face, appended to the text context."""
        c_id = self.cfg.id_scale * self.id_mlp(id_embedding.float()) + face[:, None].float()
        return torch.cat([text, c_id.to(text.dtype)], 1)

    def denoise(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pose: torch.Tensor | None = None,
                face_mode: bool = True, pose_scale: float = 1.0) -> torch.Tensor:
        """The UNet's prediction; in face-generation mode with the pose branch and PC-adapter on
        (``context`` then carries the identity tokens), else plain SD on the text tokens."""
        extra = {}
        if not face_mode:
            context = context[:, : self.gate.text_tokens]
        elif context.shape[1] != self.gate.text_tokens + self.gate.id_tokens:
            raise ValueError(f"face-generation mode needs text + {self.gate.id_tokens} identity tokens, "
                             f"got a context of {context.shape[1]}")
        if face_mode and pose is not None:
            down, mid = self.pose_branch(noisy.float(), t, encoder_hidden_states=context.float(),
                                         controlnet_cond=pose.float(), conditioning_scale=pose_scale,
                                         return_dict=False)
            dtype = self.unet.dtype
            extra = {"down_block_additional_residuals": [d.to(dtype) for d in down],
                     "mid_block_additional_residual": mid.to(dtype)}
        return self.unet(noisy.to(self.unet.dtype), t, encoder_hidden_states=context.to(self.unet.dtype),
                         **extra).sample.float()

    def predict_dense(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pose: torch.Tensor
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Face-mode prediction plus the annotation head's outputs from the same pass (Eq. 7)."""
        self._features, self._capture = [], True
        try:
            pred = self.denoise(noisy, t, context, pose)
        finally:
            self._capture = False
        dense = self.head(self._features, self.cfg.dense_size)
        self._features = []
        return pred, dense


    # -- Lightning ---------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        gen = self._generator(batch_idx)
        latents = self.encode_images(batch["image"], gen)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        n_steps = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, n_steps, (len(latents),), generator=gen).to(self.device)  # also for the dense loss
        noisy = self.scheduler.add_noise(latents, noise, t)
        text, face = self.encode_text(batch["caption"], batch["id_span"])
        context = self.identity_context(text, face, batch["ref_embedding"])
        pred, (heat, mask_logits, depth) = self.predict_dense(noisy, t, context, batch["pose"])
        heat_gt, mask_gt, depth_gt = dense_targets(batch["landmarks"], batch["mask"], batch["depth"],
                                                   batch["image"].shape[-1], self.cfg.dense_size, self.subset,
                                                   self.cfg.heatmap_sigma)
        target = noise if self.scheduler.config.prediction_type == "epsilon" \
            else self.scheduler.get_velocity(latents, noise, t)
        terms = {
            "eps": F.mse_loss(pred, target),  # Eq. 3
            **dense_terms(heat, heat_gt, mask_logits, mask_gt, depth, depth_gt, self.cfg.dense_reduction),  # Eq. 8
        }
        c = self.cfg
        loss = terms["eps"] + c.lambda_landmarks * terms["landmarks"] + c.lambda_mask * terms["mask"] \
            + c.lambda_depth * terms["depth"]  # Eq. 8
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(latents))
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(latents))
        return {"loss": loss, "terms": terms}
