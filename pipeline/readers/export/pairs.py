"""``pairs``: identity-aware reference/target pairs as JSONL, for PortraitBooth-style trainers.

``DIR/pairs.jsonl``: one line per (target, reference) pair of two different samples of the same
identity; each target gets up to ``PAIRS_PER_TARGET`` references, picked by a hash of the two
keys so a re-export picks the same ones. A sample is never its own reference, and when
``OUT/audit`` exists keys flagged ``exclude_from_pairing`` (outliers, duplicates and
near-duplicates) are neither targets nor references. Files: ``images/<key>.jpg``,
``masks/<key>.png`` (0/255 face mask, when a mask stage ran) and ``embeddings/<key>.npy``
(float32 identity embedding, when the identity stage ran); paths in the JSONL are relative to DIR.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

from pipeline.readers.export import Context, Sample, caption_of, embedding_of, face_mask_of, png_bytes
from schemas.attributes import EMOTION_WORDS

PAIRS_PER_TARGET = 4
PAIRS_FILE = "pairs.jsonl"


def _order(target: str, ref: str) -> str:
    return hashlib.sha1(f"{target}\0{ref}".encode()).hexdigest()


def choose(keys: list[str], k: int = PAIRS_PER_TARGET) -> list[tuple[str, str]]:
    """(target, reference) pairs within one identity's keys: up to ``k`` references per target."""
    pairs = []
    for t in keys:
        refs = sorted((r for r in keys if r != t), key=lambda r: _order(t, r))[:k]
        pairs.extend((t, r) for r in refs)
    return pairs


def _files(ctx: Context, sample: Sample) -> dict[str, Any]:
    """Write the sample's image, mask and embedding; their paths relative to DIR."""
    image = f"images/{sample.key}.jpg"
    ctx.writer.image(image, sample)
    entry: dict[str, Any] = {"image": image, "mask": None, "embedding": None}
    mask = face_mask_of(sample)
    if mask is not None:
        entry["mask"] = f"masks/{sample.key}.png"
        ctx.writer.bytes(entry["mask"], png_bytes(mask))
    emb = embedding_of(sample)
    if emb is not None:
        entry["embedding"] = f"embeddings/{sample.key}.npy"
        ctx.writer.npy(entry["embedding"], emb)
    caption, real = caption_of(sample)
    spans = sample.stage("caption").get("subject_spans") or []
    entry.update(caption=caption, caption_is_fallback=not real,
                 subject_span=list(spans[0]) if real and spans else None,
                 emotion=EMOTION_WORDS.get(sample.stage("attributes").get("emotion") or ""))
    return entry


def export(ctx: Context) -> dict[str, Any]:
    """Write the files of paired samples and ``pairs.jsonl``; counts."""
    excluded = {k for k, r in (ctx.audit or {}).items() if r["exclude_from_pairing"]}
    if ctx.audit is None:
        ctx.warn("no OUT/audit: duplicates and mislabeled images are not filtered (run `pipeline audit OUT`)")
    by_identity: dict[str, list[str]] = defaultdict(list)
    for key in ctx.packed():
        if key not in excluded:
            by_identity[ctx.identity[key]].append(key)
    pairs = [p for ident in sorted(by_identity) for p in choose(by_identity[ident])]
    used = {k for p in pairs for k in p}
    entries = {s.key: _files(ctx, s) for s in ctx.samples(used)}
    lines = []
    for target, ref in pairs:
        t, r = entries[target], entries[ref]
        lines.append({
            "identity": ctx.identity[target],
            "target_key": target, "target": t["image"], "target_mask": t["mask"],
            "caption": t["caption"], "caption_is_fallback": t["caption_is_fallback"],
            "subject_span": t["subject_span"], "emotion": t["emotion"],
            "reference_key": ref, "reference": r["image"], "reference_mask": r["mask"],
            "reference_embedding": r["embedding"],
        })
    import json

    ctx.writer.bytes(PAIRS_FILE, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode())
    singles = sum(len(v) == 1 for v in by_identity.values())
    return {"pairs": len(lines), "samples": len(used), "identities": len(by_identity) - singles,
            "single_image_identities": singles,
            "excluded_by_audit": len(excluded & set(ctx.keys))}
