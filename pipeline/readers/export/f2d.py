"""``f2d``: what Face2Diffusion actually consumes: the image, its 5 points and the 112x112 warp.

Today's upstream (``inference_f2d.py``) computes its identity vector itself: five points (eye
centres, nose tip, mouth corners) -> a similarity transform onto the ArcFace 112x112 template ->
``warpPerspective`` -> its MSID encoder (1536-d: 4 layers x 384) -> the mapping network, which
also takes a 64-d expression vector. We have no MSID encoder, so we write its inputs, not its
output. Layout under DIR:

    images/<key>.jpg          the annotated image (aligned 512 crop when detect ran)
    aligned/<key>.png         the 112x112 RGB warp MSID reads (ArcFace template), lossless
    points/<key>.npy          float32 (5, 2): the five points in images/<key>.jpg's pixels,
                              image-left eye first (upstream's to5lmk order)
    warps/<key>.npy           float64 (3, 3): images/<key>.jpg -> aligned/<key>.png
    expressions/<key>.npy     float32 (10,) 3DDFA-V2 expression coefficients (NOT upstream's
                              64-d expression features), when the expression stage ran
    metadata.jsonl            one line per sample: key, identity, text and those paths

An MSID identity vector (1536-d) is written only once a run has one (the identity stage's
embedding when it is 1536-d); our 128/512-d recognition embeddings would crash IMG2TEXTwithEXP.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from pipeline.readers.export import Context, caption_of, embedding_of, png_bytes, points5_in_image

METADATA = "metadata.jsonl"
MSID_DIM = 1536
EXPRESSION_NOTE = ("expressions/<key>.npy holds 10 3DDFA-V2 BFM expression coefficients, not "
                   "Face2Diffusion's 64-d expression features: its mapping network cannot take them as is")


def expression_of(sample) -> np.ndarray | None:
    if "expr.npy" in sample.files:
        return np.load(io.BytesIO(sample.files["expr.npy"])).astype(np.float32)
    expr = sample.stage("expression").get("expression")
    return np.asarray(expr, np.float32) if expr else None


def warp112(image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 112x112 ArcFace-template warp of ``image`` and its 3x3 matrix."""
    from stages.models import align

    crop, matrix = align.align(image, points, align.ARCFACE_112, 112)
    return crop, np.vstack([matrix, [0.0, 0.0, 1.0]])


def export(ctx: Context) -> dict[str, Any]:
    """Write the per-sample files and ``metadata.jsonl``; counts."""
    from PIL import Image

    lines, no_points, with_expr, msid = [], 0, 0, 0
    for sample in ctx.samples():
        pts = points5_in_image(sample)
        if pts is None:
            no_points += 1
            continue
        k = sample.key
        image = np.asarray(Image.open(io.BytesIO(sample.files["jpg"])).convert("RGB"))
        crop, matrix = warp112(image, pts)
        paths: dict[str, Any] = {"image": f"images/{k}.jpg", "aligned": f"aligned/{k}.png",
                                 "points": f"points/{k}.npy", "warp": f"warps/{k}.npy",
                                 "expression": None, "msid": None}
        ctx.writer.image(paths["image"], sample)
        ctx.writer.bytes(paths["aligned"], png_bytes(crop))
        ctx.writer.npy(paths["points"], pts.astype(np.float32))
        ctx.writer.npy(paths["warp"], matrix)
        expr = expression_of(sample)
        if expr is not None:
            paths["expression"] = f"expressions/{k}.npy"
            ctx.writer.npy(paths["expression"], expr)
            with_expr += 1
        emb = embedding_of(sample)
        if emb is not None and emb.shape == (MSID_DIM,):
            paths["msid"] = f"msid/{k}.npy"
            ctx.writer.npy(paths["msid"], emb)
            msid += 1
        text, real = caption_of(sample)
        lines.append({"key": k, "identity": sample.identity, "text": text, "caption_is_fallback": not real,
                      **paths})
    if no_points:
        ctx.warn(f"{no_points} samples skipped: no detector 5 points (run detect)")
    if len(lines) - with_expr:
        ctx.warn(f"{len(lines) - with_expr} samples have no expression coefficients (run the expression stage)")
    if lines and not msid:
        ctx.warn(f"no {MSID_DIM}-d MSID vectors: Face2Diffusion computes MSID from aligned/<key>.png itself")
    ctx.writer.bytes(METADATA, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode())
    return {"samples": len(lines), "identities": len({x["identity"] for x in lines}),
            "with_expression": with_expr, "expression_dim": 10 if with_expr else None,
            "expression_note": EXPRESSION_NOTE, "msid_vectors": msid, "aligned_size": 112}
