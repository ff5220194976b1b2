"""``dense-face``: the layout of CHELSEA234/Dense-Face's ``CASIA_toy`` for its released loader.

What its ``MyDatasetFace(dataset="CASIA", data_dir=DIR, csv_name=..., dict_file_name=...)``
reads, and what we write for it (docs/exports.md has the reading rules and our choices):

    DIR/CASIA/casiaFacesDataset256_<N>_samples_headpose.csv   one row per sample (N identities)
    DIR/CASIA/CASIA_subject_<N>_samples.txt                   the 7-digit subject ids, one a line
    DIR/CASIA/CASIAFaces/<subject>/
        images/<n>.jpg        256x256 face image (the loader's target)
        images_v2/<n>.png     the full-resolution annotated frame, lossless
        landmarks/<n>.csv     478-point mediapipe mesh, one "x,y" row per point, normalised
        landmarks/<n>.npy     float32 (478, 64, 64) Gaussian heatmaps of those points
        masks/<n>.png         256x256, the loader's 10-colour part palette (dense_face_maps)
        xyzmaps/<n>.npy       float32 (256, 256, 3) row, column, depth on face pixels
        msmasks/<n>.png       256x256 colour face parsing (parsing stage) or face region 0/255
        captions/<n>.json     {caption: {"model": ..., "CLIP_score": ...}}, best first
        attributes/<n>.json   age, sex, CelebA attributes and emotion, the official keys
        feat_file_v2/<n>.pth  torch.save'd float32 tensor (1, 512): the identity embedding
    DIR/CASIA/faceweave_keys.csv                              key, identity, subject_id, face_file

``<subject>`` is a 7-digit id (the loader zero-pads ids to 7 and matches folder names): the
identity itself when every identity is a number of at most 7 digits, else 0000001, 0000002, ...
in identity order. ``<n>`` numbers a subject's samples 001, 002, ... in key order. Each row's
reference is its first pick in the ``pairs`` export's index (another sample of the same identity,
never itself, audit-excluded keys skipped); samples with no such partner are left out.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

import numpy as np

from pipeline.readers.export import Context, Sample, caption_of, embedding_of, face_mask_of
from pipeline.readers.export import png_bytes, points5_in_image
from pipeline.readers.export import dense_face_maps as maps
from pipeline.readers.export.dense_face_maps import PALETTE  # noqa: F401  (re-exported for readers)
from pipeline.readers.export.embedding import DENSE_FACE, require, tensor_bytes
from pipeline.readers.export.pairs import choose
from schemas import attributes as sa

SIZE = 256  # the loader's image size (it resizes targets to 256)
HEATMAP = 64  # the loader's landmark map size (it asserts (478, 64, 64))
SIGMA = 1.0  # heatmap Gaussian width, map pixels
MESH_POINTS = 478
FEAT_DIM = 512
SUBJECT_DIGITS = 7  # the loader's zfill(7)
# The loader keeps a row only if its caption contains one of these (substring test).
LOADER_WORDS = ("man", "woman", "boy", "women", "men", "girl", "player", "officer", "soldier", "bruce lee")
DENSE_FACE_FALLBACK = "a close-up photo of a man or woman"
CSV_COLUMNS = ("face_file", "depth_range", "label_uncertainty", "landmark_file", "mask_file", "xyz_file",
               "annot_size", "aligned_size", "src_nose_xy", "bbox", "subject_id", "caption_file",
               "msmask_file", "msmask_score", "attr_file", "feat_file", "reference image",
               "reference image bbox", "caption", "head_pose")


def heatmaps(points: np.ndarray, size: int = HEATMAP, sigma: float = SIGMA) -> np.ndarray:
    """(N, size, size) float32 Gaussians peaking at 1, at normalised points (N, 2) times size."""
    centre = np.clip(np.floor(points * size), 0, size - 1)
    grid = np.arange(size, dtype=np.float32)
    gx = np.exp(-((grid[None, :] - centre[:, :1]) ** 2) / (2 * sigma ** 2))
    gy = np.exp(-((grid[None, :] - centre[:, 1:]) ** 2) / (2 * sigma ** 2))
    return (gy[:, :, None] * gx[:, None, :]).astype(np.float32)


def loader_caption(caption: str) -> str:
    """The caption, or a fallback that passes the loader's subject-word filter."""
    return caption if any(w in caption for w in LOADER_WORDS) else DENSE_FACE_FALLBACK


def _resize(image: np.ndarray, nearest: bool = False) -> np.ndarray:
    import cv2

    return cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _fmt(values) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def captions_json(sample: Sample, caption: str, real: bool) -> dict[str, Any]:
    """Kept captions best first, each with its captioner and CLIP score."""
    cap = sample.stage("caption")
    if not real:
        return {caption: {"model": "faceweave-fallback", "CLIP_score": None}}
    sources = dict(zip(cap.get("candidates") or [], cap.get("candidate_sources") or []))
    return {text: {"model": sources.get(text, "").split(":")[0] or cap.get("model"), "CLIP_score": score}
            for text, score in zip(cap["captions"], cap.get("caption_scores") or [None] * len(cap["captions"]))}


def attributes_json(sample: Sample) -> dict[str, Any]:
    """The official attribute keys the attributes stage has values for (see docs/exports.md)."""
    att, out = sample.stage("attributes"), {}
    if att.get("age_probs"):
        out["age_proba"] = dict(zip(sa.AGE_BINS, att["age_probs"]))  # our 5 bins, not its 10
        if att.get("age_label") in sa.AGE_RANGES:
            lo, hi = sa.AGE_RANGES[att["age_label"]]
            out["age_estimated"] = (lo + min(hi, 80)) // 2
    if att.get("gender_probs"):
        out["sex_proba"] = {"male": att["gender_probs"][sa.GENDERS.index("male")],
                            "female": att["gender_probs"][sa.GENDERS.index("female")]}
    if att.get("celeba_probs"):
        out["attr_proba"] = {n.lower(): p for n, p in zip(sa.CELEBA_ATTRIBUTES, att["celeba_probs"])}
    if att.get("emotion_probs"):
        out["emotion_estimated"] = att.get("emotion")
        out["emotion_proba"] = dict(zip(sa.EMOTIONS, att["emotion_probs"]))
    return out


def head_pose(sample: Sample) -> str:
    """"['pitch', 'yaw', 'roll']" in degrees, as the loader parses it (pose stage, else PnP)."""
    for stage in ("pose", "landmarks", "expression"):
        p = sample.stage(stage)
        if p.get("yaw") is not None:
            return "[" + ", ".join(f"'{p[a]:.7g}'" for a in ("pitch", "yaw", "roll")) + "]"
    return "['0', '0', '0']"


def subject_ids(identities: list[str]) -> dict[str, str]:
    """identity -> 7-digit subject id, stable under the loader's ``zfill(7)``."""
    if all(i.isdigit() and len(i) <= SUBJECT_DIGITS for i in identities):
        return {i: i.zfill(SUBJECT_DIGITS) for i in identities}
    return {i: f"{n:0{SUBJECT_DIGITS}d}" for n, i in enumerate(sorted(identities), start=1)}


def _image(sample: Sample, name: str):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(sample.files[name]))) if name in sample.files else None


def write_sample(ctx: Context, sample: Sample, folder: str, n: str, subject: str) -> dict[str, str]:
    """Every file of one sample; its CSV row (without the reference columns)."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(sample.files["jpg"])).convert("RGB"))
    h, w = image.shape[:2]
    path = {d: f"{folder}/{d}/{n}" for d in ("images", "images_v2", "landmarks", "masks", "xyzmaps",
                                              "msmasks", "captions", "attributes", "feat_file_v2")}
    ctx.writer.bytes(f"CASIA/{path['images']}.jpg", _jpeg(_resize(image)))
    ctx.writer.bytes(f"CASIA/{path['images_v2']}.png", png_bytes(image))
    mesh = np.load(io.BytesIO(sample.files["lmk.npy"]))[:, :2]
    lmk = mesh / np.array([w, h], np.float64)
    buf = io.StringIO()
    np.savetxt(buf, lmk, delimiter=",")
    ctx.writer.bytes(f"CASIA/{path['landmarks']}.csv", buf.getvalue().encode())
    ctx.writer.npy(f"CASIA/{path['landmarks']}.npy", heatmaps(lmk))
    labels = _image(sample, "mask.png")
    mask_file = xyz_file = ""
    if labels is not None:
        mask_file = f"{path['masks']}.png"
        ctx.writer.bytes(f"CASIA/{mask_file}", png_bytes(maps.palette_mask(_resize(labels, nearest=True))))
    depth = _image(sample, "depth.png")
    if depth is not None:
        xyz_file = f"{path['xyzmaps']}.npy"
        ctx.writer.npy(f"CASIA/{xyz_file}", maps.xyz_map(_resize(depth, nearest=True)))
    parsing = _image(sample, "parsing.png")
    face = face_mask_of(sample) if parsing is None else None
    msmask = (maps.parsing_colours(_resize(parsing, nearest=True)) if parsing is not None
              else _resize(face, nearest=True) if face is not None else None)
    if msmask is not None:
        ctx.writer.bytes(f"CASIA/{path['msmasks']}.png", png_bytes(msmask))
    caption, real = caption_of(sample)
    ctx.writer.json(f"CASIA/{path['captions']}.json", captions_json(sample, caption, real))
    ctx.writer.json(f"CASIA/{path['attributes']}.json", attributes_json(sample))
    emb = embedding_of(sample)
    ctx.writer.bytes(f"CASIA/{path['feat_file_v2']}.pth", tensor_bytes(emb, (1, FEAT_DIM)))
    # The mesh's extent, not the detector box (RetinaFace boxes run 0.72-0.86 of the crop tall):
    # squared, it is 0.6-0.7 of the crop, like the official data's boxes.
    box = [*mesh.min(axis=0).tolist(), *mesh.max(axis=0).tolist()]
    pts = points5_in_image(sample)
    return {
        "face_file": f"{path['images']}.jpg", "depth_range": "", "label_uncertainty": "",
        "landmark_file": f"{path['landmarks']}.csv", "mask_file": mask_file, "xyz_file": xyz_file,
        "annot_size": str(SIZE), "aligned_size": str(w),
        "src_nose_xy": _fmt(pts[2]) if pts is not None else "",
        "bbox": _fmt(maps.square_box(box, w, h)) if box else "",
        "subject_id": subject, "caption_file": f"{path['captions']}.json",
        "msmask_file": f"{path['msmasks']}.png" if msmask is not None else "", "msmask_score": "",
        "attr_file": f"{path['attributes']}.json", "feat_file": f"{path['feat_file_v2']}.pth",
        "caption": loader_caption(caption), "head_pose": head_pose(sample),
        "_fallback": "" if real else "1", "_parsing": "1" if parsing is not None else "",
    }


def check(ctx: Context) -> dict[str, Any]:
    """Refuse what the loader would drop or crash on: embeddings not 512-d, a mesh not 478 points,
    a DIR whose path contains "images" (the loader rewrites paths by replacing that word)."""
    import duckdb

    from pipeline.readers.sql import keys_where

    if "images" in str(ctx.to.resolve()):
        raise ValueError(f"dense-face export refused: --to {ctx.to} contains 'images', which the "
                         f"loader's path.replace('images', ...) would rewrite; choose another folder")
    checked = require(ctx, DENSE_FACE, "dense-face")
    try:
        table = keys_where(ctx.out, ctx.where, extra=("landmarks_n_landmarks", "landmarks_status"))
        counts = {n for n, st in zip(table.column("landmarks_n_landmarks").to_pylist(),
                                     table.column("landmarks_status").to_pylist()) if st == "ok"}
    except (duckdb.Error, ValueError):
        counts = set()
    if counts != {MESH_POINTS}:
        found = ", ".join(str(c) for c in sorted(counts)) or "no"
        raise ValueError(f"dense-face export refused: the loader asserts {MESH_POINTS}-point landmark "
                         f"heatmaps and this run has {found} landmarks; rerun the landmarks stage "
                         f"with --set landmarks.refine=true")
    return checked


def _pairs(ctx: Context) -> tuple[dict[str, str], int, int]:
    """target key -> reference key (the pairs index's first pick); singles and excluded counts."""
    excluded = {k for k, r in (ctx.audit or {}).items() if r["exclude_from_pairing"]}
    by_identity: dict[str, list[str]] = defaultdict(list)
    for key in ctx.packed():
        if key not in excluded:
            by_identity[ctx.identity[key]].append(key)
    reference: dict[str, str] = {}
    for keys in by_identity.values():
        for target, ref in choose(keys):
            reference.setdefault(target, ref)
    singles = sum(len(v) == 1 for v in by_identity.values())
    return reference, singles, len(excluded & set(ctx.keys))


def export(ctx: Context) -> dict[str, Any]:
    """Write the CASIA_toy-like tree, the CSV, the subject list and the key map; counts."""
    reference, singles, excluded = _pairs(ctx)
    if ctx.audit is None:
        ctx.warn("no OUT/audit: duplicates and mislabeled images are not filtered (run `pipeline audit OUT`)")
    wanted = set(reference) | set(reference.values())
    subjects = subject_ids(sorted({ctx.identity[k] for k in wanted}))
    rows: dict[str, dict[str, str]] = {}
    number: dict[str, int] = defaultdict(int)
    skipped = 0
    for sample in ctx.samples(wanted):
        if "lmk.npy" not in sample.files or embedding_of(sample) is None:
            skipped += 1
            continue
        subject = subjects[sample.identity]
        number[subject] += 1
        rows[sample.key] = write_sample(ctx, sample, f"CASIAFaces/{subject}", f"{number[subject]:03d}", subject)
    kept = [k for k in sorted(rows) if k in reference and reference[k] in rows]
    for key in kept:
        ref = rows[reference[key]]
        rows[key]["reference image"], rows[key]["reference image bbox"] = ref["face_file"], ref["bbox"]
    used = sorted({rows[k]["subject_id"] for k in kept})
    n_ids = len(used)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[k] for k in kept)
    csv_name = f"CASIA/casiaFacesDataset256_{n_ids}_samples_headpose.csv"
    ctx.writer.bytes(csv_name, buf.getvalue().encode())
    ctx.writer.bytes(f"CASIA/CASIA_subject_{n_ids}_samples.txt", "".join(f"{i}\n" for i in used).encode())
    kbuf = io.StringIO()
    kw = csv.writer(kbuf, lineterminator="\n")
    kw.writerow(("key", "identity", "subject_id", "face_file", "reference_key"))
    kw.writerows((k, ctx.identity[k], rows[k]["subject_id"], rows[k]["face_file"], reference.get(k, ""))
                 for k in sorted(rows))
    ctx.writer.bytes("CASIA/faceweave_keys.csv", kbuf.getvalue().encode())
    if skipped:
        ctx.warn(f"{skipped} samples skipped: no landmarks (lmk.npy) or no identity embedding")
    if singles:
        ctx.warn(f"{singles} identities have a single usable sample: no reference other than itself, left out")
    parsed = sum(bool(rows[k]["_parsing"]) for k in kept)
    return {"samples": len(kept), "identities": n_ids, "sample_num": n_ids,
            "fallback_captions": sum(bool(rows[k]["_fallback"]) for k in kept),
            "single_image_identities": singles, "excluded_by_audit": excluded,
            "csv": csv_name, "subjects": f"CASIA/CASIA_subject_{n_ids}_samples.txt",
            "mask_channels": list(maps.CHANNEL_NAMES),
            "msmask": "parsing" if parsed == len(kept) and kept else "face_region" if not parsed else "mixed",
            "msmask_colours": {k: list(v) for k, v in maps.PARSING_COLOURS.items()} if parsed else None}
