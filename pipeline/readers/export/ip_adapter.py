"""``ip-adapter-faceid``: the JSON list IP-Adapter's ``tutorial_train_faceid.py`` reads.

``DIR/data.json`` is a list of ``{"image_file", "text", "id_embed_file"}``, both paths relative
to DIR: the script joins ``image_file`` with ``--data_root_path`` (pass DIR) but opens
``id_embed_file`` as given, so run it from DIR (``cd DIR``) and the folder can move. Each
embedding file (``embeddings/<key>.bin``) is a ``torch.save``d float32 tensor (512,), unit length
like insightface's ``normed_embedding``. Upstream embeds with insightface buffalo_l
(``w600k_r50``); an export of another size is refused, one of another 512-d model warned.
"""
from __future__ import annotations

from typing import Any

from pipeline.readers.export import Context, caption_of, embedding_of
from pipeline.readers.export.embedding import IP_ADAPTER, require, scaled, tensor_bytes

DATA_FILE = "data.json"
TARGET = IP_ADAPTER
# The script turns the loaded file into a tensor with torch.from_numpy, which a tensor (the only
# payload torch >= 2.6 loads by default) refuses: its one line to change (docs/exports.md).
TRAINER_PATCH = "torch.from_numpy(face_id_embed) -> torch.as_tensor(face_id_embed)"


def check(ctx: Context) -> dict[str, Any]:
    return {**require(ctx, TARGET, "ip-adapter-faceid"), "trainer_patch": TRAINER_PATCH}


def export(ctx: Context) -> dict[str, Any]:
    """Write images, embedding files and ``data.json``; counts."""
    items, skipped, identities = [], 0, set()
    for sample in ctx.samples():
        emb = embedding_of(sample)
        if emb is None:
            skipped += 1
            continue
        image, feat = f"images/{sample.key}.jpg", f"embeddings/{sample.key}.bin"
        ctx.writer.image(image, sample)
        ctx.writer.bytes(feat, tensor_bytes(scaled(sample, emb, TARGET.scale)))
        identities.add(sample.identity)
        text, _ = caption_of(sample)
        items.append({"image_file": image, "text": text, "id_embed_file": feat})
    if skipped:
        ctx.warn(f"{skipped} samples skipped: no identity embedding (run the identity stage)")
    ctx.writer.json(DATA_FILE, items)
    return {"samples": len(items), "identities": len(identities), "paths_relative_to": "DIR"}
