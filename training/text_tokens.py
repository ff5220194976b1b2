"""Learned word embeddings in a frozen CLIP text encoder's input (Face2Diffusion's S*, SeFi-IDE's tokens).

A prompt names the identity with a placeholder word (``{}`` in a template is replaced by it);
the placeholder's tokens get the learned vectors in place of their token embeddings (position
embeddings are still added), then the frozen encoder runs as usual, gradients flowing into the
vectors. Done with a forward hook on the token embedding, so it does not depend on the text
model's internals.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from training.dense_face import identity_positions


def fill(template: str, word: str, count: int = 1) -> tuple[str, list[tuple[int, int]]]:
    """``template`` with ``{}`` replaced by ``count`` copies of ``word``; their [start, end) spans."""
    if template.count("{}") != 1:
        raise ValueError(f"a prompt template needs exactly one '{{}}' for the identity, got {template!r}")
    head = template.split("{}")[0]
    spans, pos = [], len(head)
    for i in range(count):
        spans.append((pos, pos + len(word)))
        pos += len(word) + 1
    return template.replace("{}", " ".join([word] * count)), spans


def placeholder_positions(tokenizer, prompts: list[str], spans: list[list[tuple[int, int]]],
                          max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, L) and the token index (B, K) of each placeholder word span (-1: truncated)."""
    tok = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_length,
                    return_offsets_mapping=True, return_tensors="pt")
    k = max(len(s) for s in spans)
    cols = []
    for j in range(k):
        col = torch.tensor([list(s[j]) if j < len(s) else [-1, -1] for s in spans])
        cols.append(identity_positions(tok.offset_mapping, col))
    return tok.input_ids, torch.stack(cols, 1)


@contextmanager
def injected(text_encoder: nn.Module, positions: torch.Tensor, vectors: torch.Tensor) -> Iterator[None]:
    """While active, token embeddings at ``positions`` (B, K; -1 skips) become ``vectors`` (B, K, D)."""
    emb = text_encoder.get_input_embeddings()

    def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        pos = positions.to(out.device)
        use = pos >= 0
        if not use.any():
            return out
        rows = torch.arange(len(pos), device=out.device)[:, None].expand_as(pos)
        out = out.clone()
        out[rows[use], pos[use]] = vectors.to(out.device, out.dtype)[use]
        return out

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode(text_encoder: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
           vectors: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder's last hidden state (B, L, D), with ``vectors`` injected when given."""
    ids = input_ids.to(text_encoder.device)
    if vectors is None:
        return text_encoder(ids)[0]
    with injected(text_encoder, positions, vectors):
        return text_encoder(ids)[0]
