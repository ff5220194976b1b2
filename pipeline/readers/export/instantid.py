"""``instantid``: JSONL with image, text, five keypoints and embedding, for InstantID training.

InstantID's authors released no training code; the format follows the community trainer
MFaceTech/InstantID (``train_instantId_sdxl.py``, also used by FaceID-6M), whose dataset reads
one JSON object per line:

    file_name                 image path, joined with --data_root_path (pass DIR)
    additional_feature        the text prompt
    bbox                      face box x1, y1, x2, y2 in the image's pixels
    landmarks                 five [x, y] keypoints in the image's pixels, drawn into the
                              ControlNet condition: left eye, right eye, nose, left and right
                              mouth corner as seen in the image (insightface's kps order)
    insightface_feature_file  a torch.save'd float32 tensor (512,), joined with the root

plus ``key`` and ``identity``, which the loader ignores. The trainer and its sample data use
antelopev2's RAW ``face.embedding`` (L2 about 20), reshaped to (1, 512) for its Resampler, so we
write the unit vector times the identity stage's ``norm_before``. 128-d exports are refused;
512-d embeddings of a model other than glintr100 are written with a loud warning.
"""
from __future__ import annotations

import json
from typing import Any

from pipeline.readers.export import Context, box_in_image, caption_of, embedding_of, points5_in_image
from pipeline.readers.export.embedding import INSTANTID, require, scaled, tensor_bytes
from pipeline.readers.export.ip_adapter import TRAINER_PATCH

INDEX_FILE = "instantid.jsonl"
TARGET = INSTANTID


def check(ctx: Context) -> dict[str, Any]:
    return {**require(ctx, TARGET, "instantid"), "trainer_patch": TRAINER_PATCH}


def export(ctx: Context) -> dict[str, Any]:
    """Write images, embedding files and ``instantid.jsonl``; counts."""
    lines, skipped, norms = [], 0, []
    for sample in ctx.samples():
        emb, kps = embedding_of(sample), points5_in_image(sample)
        if emb is None or kps is None:
            skipped += 1
            continue
        image, feat = f"images/{sample.key}.jpg", f"embeddings/{sample.key}.bin"
        ctx.writer.image(image, sample)
        raw = scaled(sample, emb, TARGET.scale)
        norms.append(float((raw ** 2).sum() ** 0.5))
        ctx.writer.bytes(feat, tensor_bytes(raw))
        text, real = caption_of(sample)
        lines.append({"file_name": image, "additional_feature": text, "bbox": box_in_image(sample),
                      "landmarks": kps.round(3).tolist(), "insightface_feature_file": feat,
                      "key": sample.key, "identity": sample.identity})
    if skipped:
        ctx.warn(f"{skipped} samples skipped: no identity embedding or no detect keypoints")
    ctx.writer.bytes(INDEX_FILE, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode())
    return {"samples": len(lines), "identities": len({x["identity"] for x in lines}),
            "embedding_norm_range": [min(norms), max(norms)] if norms else None}
