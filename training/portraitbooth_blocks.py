"""PortraitBooth building blocks: subject MLP, cross-attention map recorder, face alignment and the
frozen face-recognition network used for features and the identity loss.

Nothing here knows about batches or Lightning; ``training.portraitbooth`` wires it together.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from stages.models import align
from stages.models import load, registry
from training.sd import attention_begin, attention_end

FACE_SIZE = 112  # the ArcFace template crop every registered recogniser takes
# per recogniser family, the end of its first 56x56 stage (64 channels): STEA's "shallow features"
SHALLOW_LAYERS = {"mobilefacenet": "dw_conv", "arcface": "body.2"}


class SubjectMLP(nn.Module):
    """Eq. 4: the identity token's conditioning vector from [text embedding || face feature].

    Written as a residual on the token's text embedding with a zero-initialised output layer, so
    an untrained MLP leaves Stable Diffusion's conditioning unchanged.
    """

    def __init__(self, text_dim: int, face_dim: int, hidden: int):
        super().__init__()
        self.face_norm = nn.LayerNorm(face_dim)  # unit-norm embeddings and raw feature maps alike
        self.net = nn.Sequential(nn.Linear(text_dim + face_dim, hidden), nn.GELU(), nn.Linear(hidden, text_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, token: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        x = torch.cat([token.float(), self.face_norm(face.float())], -1)
        return token.float() + self.net(x)


class AttentionRecorder:
    """Shared state of the recording processors: which token columns to keep and the kept maps.

    ``positions`` (B, K) token indices (-1: none) stay set until the next ``set``: with gradient
    checkpointing the backward pass recomputes the attention, and the recomputation must run the
    same operations as the forward pass. Only ``active`` decides whether maps are kept.
    """

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None
        self.active = False
        self.maps: list[torch.Tensor] = []  # per cross-attention layer, (B, K, h, w)
        self.latent_hw: tuple[int, int] = (1, 1)

    def set(self, positions: torch.Tensor | None, latent_hw: tuple[int, int]) -> None:
        self.positions, self.latent_hw, self.maps = positions, latent_hw, []

    def take(self) -> list[torch.Tensor]:
        maps, self.maps = self.maps, []
        return maps

    def keep(self, probs: torch.Tensor, batch: int, heads: int) -> None:
        """Head-averaged maps of the recorded tokens from (B * heads, HW, L) attention probabilities."""
        if self.positions is None:
            return
        hw, n_tok = probs.shape[1], probs.shape[2]
        pos = self.positions.to(probs.device).clamp(0, n_tok - 1)
        mean = probs.view(batch, heads, hw, n_tok).mean(1)  # (B, HW, L)
        picked = mean.gather(2, pos[:, None, :].expand(batch, hw, pos.shape[1]))  # (B, HW, K)
        lat_h, lat_w = self.latent_hw
        h = max(1, round((hw * lat_h / lat_w) ** 0.5))
        maps = picked.transpose(1, 2).reshape(batch, pos.shape[1], h, hw // h)
        if self.active:
            self.maps.append(maps)


class RecordingCrossAttnProcessor:
    """Cross-attention with explicit probabilities (SDPA hides them), handing them to the recorder."""

    def __init__(self, recorder: AttentionRecorder):
        self.recorder = recorder

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: object, **kwargs: object) -> torch.Tensor:
        hidden_states, residual, shape = attention_begin(attn, hidden_states, temb)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, n_ctx = context.shape[0], context.shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, n_ctx, batch)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, attention_mask)
        self.recorder.keep(probs, batch, attn.heads)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attention_end(attn, out, residual, shape)


def install_recorder(unet: nn.Module, recorder: AttentionRecorder) -> int:
    """Give every cross-attention of ``unet`` a recording processor; returns how many."""
    processors, n = {}, 0
    for name, proc in unet.attn_processors.items():
        if unet.get_submodule(name.removesuffix(".processor")).is_cross_attention:
            proc, n = RecordingCrossAttnProcessor(recorder), n + 1
        processors[name] = proc
    unet.set_attn_processor(processors)
    return n


def localization_term(maps: list[torch.Tensor], mask: torch.Tensor, floor: float) -> torch.Tensor:
    """Per sample, the mean over layers of mean(A (1 - M)) + mean(relu(floor - A) M) (one token of Eq. 7).

    ``maps``: per layer (B, h, w) attention of one token; ``mask``: (B, 1, H, W) face mask in [0, 1].
    """
    terms = []
    for a in maps:
        m = F.interpolate(mask.to(a.dtype), size=a.shape[-2:], mode="area")[:, 0].float()
        a = a.float()
        terms.append((a * (1 - m)).mean((1, 2)) + (F.relu(floor - a) * m).mean((1, 2)))
    return torch.stack(terms).mean(0)


def _crop_matrix(points: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Source -> crop similarity for ``points`` and the area shrink factor to apply first (1: none)."""
    matrix = align.umeyama(points, align.ARCFACE_112 * (size / FACE_SIZE))
    scale = align.scale_of(matrix)
    return matrix, (scale if scale < 0.8 else 1.0)


def align_faces(images: torch.Tensor, points: torch.Tensor, size: int = FACE_SIZE) -> torch.Tensor:
    """Differentiable ArcFace-template crops of (B, 3, H, W) images at their (B, 5, 2) pixel points.

    The same similarity as ``stages.models.align`` (Umeyama on the five points); like its ``warp``, a strong
    downscale first shrinks the image by area so the bilinear sampling does not alias.
    """
    out = []
    height, width = images.shape[-2:]
    for image, pts in zip(images, points.detach().cpu().double().numpy()):
        matrix, shrink = _crop_matrix(pts, size)
        h, w = height, width
        if shrink < 1.0:
            h, w = max(1, round(height * shrink)), max(1, round(width * shrink))
            image = F.interpolate(image[None], size=(h, w), mode="area")[0]
            sx, sy = w / width, h / height
            # crop <- source <- shrunk: source p = (p' + 0.5) / s - 0.5
            back = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])
            matrix = matrix @ back
        full = np.vstack([matrix, [0, 0, 1]])
        inv = torch.from_numpy(np.linalg.inv(full)[:2]).to(image)
        u = torch.arange(size, dtype=image.dtype, device=image.device)
        grid = torch.stack(torch.meshgrid(u, u, indexing="xy") + (torch.ones(size, size).to(image),), -1)
        src = grid @ inv.T  # (size, size, 2) source pixels, centres at integers
        norm = torch.stack([(2 * src[..., 0] + 1) / w - 1, (2 * src[..., 1] + 1) / h - 1], -1)
        out.append(F.grid_sample(image[None], norm[None], mode="bilinear", padding_mode="reflection",
                                 align_corners=False)[0])
    return torch.stack(out)


class _Stop(Exception):
    pass


class FaceEmbedder(nn.Module):
    """A frozen registered face recogniser on 112x112 ArcFace-aligned faces in [-1, 1].

    Gradients flow to the input (the identity loss needs them), never into the weights.
    """

    def __init__(self, name: str, weights: str = "pretrained", root: str | None = None):
        super().__init__()
        spec = registry.get(name)
        if spec.family not in ("arcface", "mobilefacenet"):
            raise ValueError(f"{name!r} is not a face-recognition network")
        self.name, self.family = name, spec.family
        self.net = load(name, root, random_init=weights == "random").float().requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(spec.extra["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.extra["std"]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "FaceEmbedder":
        return super().train(False)  # BatchNorm statistics stay the recogniser's own

    def _input(self, faces: torch.Tensor) -> torch.Tensor:
        return ((faces.float() + 1) / 2 - self.mean) / self.std

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings, (B, D)."""
        return F.normalize(self.net(self._input(faces)).float(), dim=1)

    def shallow(self, faces: torch.Tensor, layer: str, grid: int) -> torch.Tensor:
        """The output of submodule ``layer`` ("": ``SHALLOW_LAYERS`` of the family), average-pooled to
        ``grid`` x ``grid`` and flattened: (B, channels * grid^2)."""
        layer = layer or SHALLOW_LAYERS[self.family]
        kept: list[torch.Tensor] = []

        def hook(_m: nn.Module, _i: object, output: torch.Tensor) -> None:
            kept.append(output)
            raise _Stop  # the deeper layers are not needed

        handle = self.net.get_submodule(layer).register_forward_hook(hook)
        try:
            self.net(self._input(faces))
        except _Stop:
            pass
        finally:
            handle.remove()
        return F.adaptive_avg_pool2d(kept[0].float(), grid).flatten(1)


def identity_loss(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Eq. 6 per sample: 1 - cos(reference embedding, estimated face's embedding)."""
    return 1 - F.cosine_similarity(reference.float(), estimate.float(), dim=1)
