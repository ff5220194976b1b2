"""Frozen Stable Diffusion components: loaded from a diffusers folder or hub id, or built tiny.

``load_sd("tiny")`` builds random miniature models in code (tests, smoke runs: no download);
``sd21_components()`` builds the real-size SD 2.1 architecture with random weights (benchmarks).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY = "tiny"
_TINY_WORDS = ("a", "of", "photo", "face", "person", "man", "woman", "smiling")

SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, steps_offset=1,
)
SD21_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
SD21_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.18215,
)
SD21_TEXT: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)


@dataclass
class SDComponents:
    """The pieces of a Stable Diffusion pipeline that Dense-Face keeps frozen."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def save(self, path: Path) -> None:
        """Write a diffusers-layout folder that ``load_sd`` reads back."""
        path = Path(path)
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            getattr(self, name).save_pretrained(path / name)


def load_sd(base: str | Path, dtype: torch.dtype = torch.float32, variant: str | None = None) -> SDComponents:
    """Components from a diffusers folder or hub id (e.g. ``stabilityai/stable-diffusion-2-1-base``)."""
    if str(base) == TINY:
        return tiny_sd_components()
    kw: dict[str, Any] = {"local_files_only": Path(base).is_dir()}
    typed = dict(kw, torch_dtype=dtype, variant=variant)
    return SDComponents(
        unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", **typed),
        vae=AutoencoderKL.from_pretrained(base, subfolder="vae", **typed),
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **typed),
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **kw),
        scheduler=DDPMScheduler.from_pretrained(base, subfolder="scheduler", **kw),
    )


def tiny_tokenizer(words: tuple[str, ...] = _TINY_WORDS, max_length: int = 77) -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer whose only merges spell ``words``; anything else is bytes."""
    from tokenizers import pre_tokenizers

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.append(parts[0])
    ids = {tok: i for i, tok in enumerate(dict.fromkeys(vocab))}
    tok = CLIPTokenizer(vocab=ids, merges=list(dict.fromkeys(merges)))
    tok.model_max_length = max_length
    with tempfile.TemporaryDirectory() as tmp:  # a saved-and-reloaded tokenizer, as from_pretrained gives
        tok.save_pretrained(tmp)
        return CLIPTokenizer.from_pretrained(tmp)


def tiny_sd_components(seed: int = 0, cross_dim: int = 32) -> SDComponents:
    """Random miniature SD: 8x VAE (like SD), 2-level UNet with cross-attention, 2-layer CLIP text."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cross_dim, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    return SDComponents(unet, vae, text, tokenizer, DDPMScheduler(**SCHEDULER_CONFIG))


def sd21_components(dtype: torch.dtype = torch.float32) -> SDComponents:
    """The SD 2.1 (512, epsilon) architecture with random weights; the tokenizer is the tiny one."""
    tokenizer = tiny_tokenizer()
    return SDComponents(
        unet=UNet2DConditionModel(**SD21_UNET).to(dtype),
        vae=AutoencoderKL(**SD21_VAE).to(dtype),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD21_TEXT)).to(dtype),
        tokenizer=tokenizer,
        scheduler=DDPMScheduler(**SCHEDULER_CONFIG),
    )


def attention_begin(attn: Any, hidden_states: torch.Tensor, temb: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """What every diffusers attention processor does first: spatial norm, (B, C, H, W) ->
    (B, HW, C), group norm. Returns (hidden states, residual, input shape)."""
    residual, shape = hidden_states, hidden_states.shape
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, residual, shape


def attention_end(attn: Any, out: torch.Tensor, residual: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """And last: output projection and dropout, back to the input's shape, residual, rescale."""
    out = attn.to_out[1](attn.to_out[0](out))
    if len(shape) == 4:
        out = out.transpose(1, 2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor
