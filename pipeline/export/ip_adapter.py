"""``ip-adapter-faceid``: the JSON list IP-Adapter's ``tutorial_train_faceid.py`` reads.

``DIR/data.json`` is a list of ``{"image_file", "text", "id_embed_file"}``. The script opens
``os.path.join(--data_root_path, image_file)``, so ``image_file`` is relative to DIR (pass
``--data_root_path DIR``); it calls ``torch.load(id_embed_file)`` WITHOUT joining the root, so
``id_embed_file`` is an absolute path. Each embedding file (``embeddings/<key>.bin``) is a
``torch.save``d float32 numpy array of shape (dim,), which the script turns into a tensor with
``torch.from_numpy``. The script's projection expects 512 values (insightface / ArcFace): a
128-d MobileFaceNet export is flagged in the warnings.
"""
from __future__ import annotations

from typing import Any

from pipeline.export import Context, caption_of, embedding_of

DATA_FILE = "data.json"
EXPECTED_DIM = 512


def export(ctx: Context) -> dict[str, Any]:
    """Write images, embedding files and ``data.json``; counts."""
    items, skipped, dims, identities = [], 0, set(), set()
    root = ctx.to.resolve()
    for sample in ctx.samples():
        emb = embedding_of(sample)
        if emb is None:
            skipped += 1
            continue
        image, feat = f"images/{sample.key}.jpg", f"embeddings/{sample.key}.bin"
        ctx.writer.image(image, sample)
        ctx.writer.torch(feat, emb)
        dims.add(int(emb.shape[0]))
        identities.add(sample.identity)
        text, _ = caption_of(sample)
        items.append({"image_file": image, "text": text, "id_embed_file": str(root / feat)})
    if skipped:
        ctx.warn(f"{skipped} samples skipped: no identity embedding (run the identity stage)")
    if dims - {EXPECTED_DIM}:
        ctx.warn(f"embeddings have {sorted(dims)} values; IP-Adapter-FaceID's MLPProjModel is built "
                 f"for {EXPECTED_DIM} (ArcFace, the full preset's identity model)")
    ctx.writer.json(DATA_FILE, items)
    return {"samples": len(items), "identities": len(identities)}
