"""SeFi-IDE building blocks: the token self-attention module and the disentangled (K, V) cross-attention.

* ``TokenExpander`` (Sec. 3.2, Appendix 6.2): the identity token, initialised as the word
  "person", expanded by two self-attention layers and one feed-forward layer into
  ``stages`` x 2 word embeddings: each stage's (P_i^K, P_i^V);
* ``KVAttnProcessor``: every UNet cross-attention takes its keys from the context encoded with
  P_i^K and its values from the one encoded with P_i^V; while ``state.reference`` is set it also
  computes the attention maps of the reference prompt's keys (same queries) and adds the
  face-wise attention loss (Sec. 3.1, Algorithm 1) to ``state.losses``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn
from training.sd import attention_begin, attention_end


class TokenExpander(nn.Module):
    """(D,) initial token -> (stages, 2, D): per stage the key token and the value token."""

    def __init__(self, init: torch.Tensor, stages: int, heads: int, slot_std: float = 0.02):
        super().__init__()
        dim = init.shape[-1]
        self.stages = stages
        self.register_buffer("init", init.detach().clone().float().view(1, 1, dim))
        self.slots = nn.Parameter(torch.randn(1, 2 * stages, dim) * slot_std)  # which of the 10 parts
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(2))
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self) -> torch.Tensor:
        x = self.init + self.slots
        for norm, attn in zip(self.norms, self.attn):
            h = norm(x)
            x = x + attn(h, h, h, need_weights=False)[0]
        x = x + self.ffn(self.norms[2](x))
        return x.view(self.stages, 2, -1)


@dataclass
class KVState:
    """What the processors read for one UNet pass (set by the module before calling the UNet)."""

    values: torch.Tensor | None = None  # (B, L, D) context the values come from; None: the keys' context
    reference: torch.Tensor | None = None  # (B, L, D) reference-prompt context: record the attention loss
    target_mask: torch.Tensor | None = None  # (B, 1, H, W) face mask for the identity token's target map
    id_pos: torch.Tensor | None = None  # (B,) identity token index
    losses: list[torch.Tensor] = field(default_factory=list)


def attention_target(ref_probs: torch.Tensor, state: KVState, side: tuple[int, int]) -> torch.Tensor:
    """The reference maps; with a mask, the identity token's column kept inside the face only."""
    if state.target_mask is None or state.id_pos is None:
        return ref_probs
    b, heads, n, _ = ref_probs.shape
    m = F.interpolate(state.target_mask.float().to(ref_probs.device), size=side, mode="area").view(b, 1, n)
    cols = F.one_hot(state.id_pos.to(ref_probs.device), ref_probs.shape[-1]).bool().view(b, 1, 1, -1)
    return torch.where(cols, ref_probs * m[..., None], ref_probs)


class KVAttnProcessor(nn.Module):
    """Cross-attention with separate key and value contexts and the face-wise attention loss."""

    def __init__(self, state: KVState):
        super().__init__()
        self.state, self.base = state, AttnProcessor2_0()

    def forward(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        s = self.state
        if encoder_hidden_states is None or (s.values is None and s.reference is None):
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        hidden_states, residual, shape = attention_begin(attn, hidden_states, temb)
        keys_ctx = encoder_hidden_states
        values_ctx = s.values.to(keys_ctx.dtype) if s.values is not None else keys_ctx
        if attn.norm_cross:
            keys_ctx, values_ctx = attn.norm_encoder_hidden_states(keys_ctx), attn.norm_encoder_hidden_states(values_ctx)
        b, heads = hidden_states.shape[0], attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(keys_ctx)), split(attn.to_v(values_ctx))
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)  # (B, heads, HW, L)
        if s.reference is not None:
            ref = s.reference.to(keys_ctx.dtype)
            ref = attn.norm_encoder_hidden_states(ref) if attn.norm_cross else ref
            with torch.no_grad():
                ref_probs = (q @ split(attn.to_k(ref)).transpose(-1, -2) * attn.scale).softmax(-1)
            n = probs.shape[2]
            side = (shape[-2], shape[-1]) if len(shape) == 4 else (int(n ** 0.5), int(n ** 0.5))
            s.losses.append(F.mse_loss(probs.float(), attention_target(ref_probs.float(), s, side)))
        out = (probs @ v).transpose(1, 2).reshape(b, -1, heads * v.shape[-1]).to(q.dtype)
        return attention_end(attn, out, residual, shape)


def install_kv(unet: nn.Module, state: KVState) -> int:
    """Give every cross-attention a ``KVAttnProcessor`` sharing ``state``; returns how many."""
    processors, n = {}, 0
    for name, proc in unet.attn_processors.items():
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention:
            proc, n = KVAttnProcessor(state), n + 1
        processors[name] = proc
    unet.set_attn_processor(processors)
    return n
