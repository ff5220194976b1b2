"""``f2d``: image, face mask, expression vector and identity embedding per sample (Face2Diffusion).

Face2Diffusion's released code reads an identity vector with ``np.load`` from a ``.npy`` next to
the photo (``input/0.jpg`` + ``input/0.npy``); its training data adds a face mask (the loss is
restricted to the face) and an expression vector per image. Layout under DIR:

    images/<key>.jpg          the annotated image (aligned crop when detect ran)
    images/<key>.npy          float32 (dim,) identity embedding, like the repo's input/<n>.npy
    masks/<key>.png           uint8 0/255 face mask, same size as the image
    expressions/<key>.npy     float32 (10,) 3DDFA-V2 expression coefficients
    metadata.jsonl            one line per sample: key, identity, text and the four paths

Samples without an embedding, mask or expression (a stage did not run) are skipped and counted.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from pipeline.export import Context, caption_of, embedding_of, face_mask_of, png_bytes

METADATA = "metadata.jsonl"


def expression_of(sample) -> np.ndarray | None:
    if "expr.npy" in sample.files:
        return np.load(io.BytesIO(sample.files["expr.npy"])).astype(np.float32)
    expr = sample.stage("expression").get("expression")
    return np.asarray(expr, np.float32) if expr else None


def export(ctx: Context) -> dict[str, Any]:
    """Write the per-sample files and ``metadata.jsonl``; counts."""
    lines, missing = [], {"embedding": 0, "mask": 0, "expression": 0}
    for sample in ctx.samples():
        emb, mask, expr = embedding_of(sample), face_mask_of(sample), expression_of(sample)
        for name, value in (("embedding", emb), ("mask", mask), ("expression", expr)):
            missing[name] += value is None
        if emb is None or mask is None or expr is None:
            continue
        k = sample.key
        paths = {"image": f"images/{k}.jpg", "id_embedding": f"images/{k}.npy",
                 "mask": f"masks/{k}.png", "expression": f"expressions/{k}.npy"}
        ctx.writer.image(paths["image"], sample)
        ctx.writer.npy(paths["id_embedding"], emb)
        ctx.writer.bytes(paths["mask"], png_bytes(mask))
        ctx.writer.npy(paths["expression"], expr)
        text, real = caption_of(sample)
        lines.append({"key": k, "identity": sample.identity, "text": text, "caption_is_fallback": not real,
                      **paths})
    for name, n in missing.items():
        if n:
            ctx.warn(f"{n} samples skipped: no {name} (run the stage that makes it)")
    ctx.writer.bytes(METADATA, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode())
    return {"samples": len(lines), "identities": len({x["identity"] for x in lines})}
