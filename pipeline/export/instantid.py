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
    insightface_feature_file  a torch.save'd float32 numpy array (dim,), joined with the root

plus ``key`` and ``identity``, which the loader ignores. The loader reshapes the embedding to
(1, dim); InstantID's projection expects 512 values (antelopev2 ArcFace), flagged otherwise.
"""
from __future__ import annotations

import json
from typing import Any

from pipeline.export import Context, box_in_image, caption_of, embedding_of, points5_in_image

INDEX_FILE = "instantid.jsonl"
EXPECTED_DIM = 512


def export(ctx: Context) -> dict[str, Any]:
    """Write images, embedding files and ``instantid.jsonl``; counts."""
    lines, skipped, dims = [], 0, set()
    for sample in ctx.samples():
        emb, kps = embedding_of(sample), points5_in_image(sample)
        if emb is None or kps is None:
            skipped += 1
            continue
        image, feat = f"images/{sample.key}.jpg", f"embeddings/{sample.key}.bin"
        ctx.writer.image(image, sample)
        ctx.writer.torch(feat, emb)
        dims.add(int(emb.shape[0]))
        text, real = caption_of(sample)
        lines.append({"file_name": image, "additional_feature": text, "bbox": box_in_image(sample),
                      "landmarks": kps.round(3).tolist(), "insightface_feature_file": feat,
                      "key": sample.key, "identity": sample.identity})
    if skipped:
        ctx.warn(f"{skipped} samples skipped: no identity embedding or no detect keypoints")
    if dims - {EXPECTED_DIM}:
        ctx.warn(f"embeddings have {sorted(dims)} values; InstantID's image projection expects "
                 f"{EXPECTED_DIM} (ArcFace, the full preset's identity model)")
    ctx.writer.bytes(INDEX_FILE, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode())
    return {"samples": len(lines), "identities": len({x["identity"] for x in lines})}
