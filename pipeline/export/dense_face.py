"""``dense-face``: the layout of CHELSEA234/Dense-Face's ``CASIA_toy`` for its released loader.

What its ``MyDatasetFace(dataset="CASIA", data_dir=DIR, csv_name=..., dict_file_name=...)``
reads, and what we write for it (see docs/exports.md for the assumptions):

    DIR/CASIA/casiaFacesDataset256_<N>_samples_headpose.csv   one row per sample (N identities)
    DIR/CASIA/CASIA_subject_<N>_samples.txt                   the identities, one per line
    DIR/CASIA/CASIAFaces/<identity>/
        images/<n>.jpg        256x256 face image (the loader's target)
        images_v2/<n>.png     the full-resolution annotated frame, lossless
        landmarks/<n>.csv     mediapipe mesh, one "x,y" row per point, normalised to [0, 1]
        landmarks/<n>.npy     float32 (points, 64, 64) Gaussian heatmaps of those points
        masks/<n>.png         256x256 RGB pseudo mask, one loader palette colour per part
        msmasks/<n>.png       256x256 grey face-region mask, 0/255
        captions/<n>.json     {caption: {"model": ..., "CLIP_score": ...}}, best first
        attributes/<n>.json   {"emotion_estimated": ..., "emotion_proba": {...}}
        feat_file_v2/<n>.pth  torch.save'd float32 numpy array (1, dim): the identity embedding
    DIR/CASIA/faceweave_keys.csv                              key -> face_file (ours, not read)

``<n>`` numbers an identity's samples 001, 002, ... in key order.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

import numpy as np

from pipeline.export import Context, Sample, box_in_image, caption_of, embedding_of, face_mask_of
from pipeline.export import png_bytes
from schemas.attributes import EMOTIONS
from schemas.pseudo_mask import CLASSES as MASK_CLASSES

SIZE = 256  # the loader's image size (it resizes targets to 256)
HEATMAP = 64  # the loader's landmark map size (it asserts (478, 64, 64))
SIGMA = 1.0  # heatmap Gaussian width, map pixels
MESH_POINTS = 478
FEAT_DIM = 512
# The loader keeps a row only if its caption contains one of these (substring test).
LOADER_WORDS = ("man", "woman", "boy", "women", "men", "girl", "player", "officer", "soldier", "bruce lee")
DENSE_FACE_FALLBACK = "a close-up photo of a man or woman"
# The loader's ten part colours (B, G, R, as cv2 reads them); our part i uses PALETTE[i - 1].
PALETTE = ((227, 206, 166), (0, 127, 255), (111, 191, 253), (180, 120, 31), (153, 154, 251),
           (138, 223, 178), (214, 178, 202), (28, 26, 227), (154, 61, 106), (44, 160, 51))
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


def palette_mask(labels: np.ndarray) -> np.ndarray:
    """A label map (ids of schemas.pseudo_mask) as the loader's colour-coded RGB image."""
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    for cid, _, _ in MASK_CLASSES:
        rgb[labels == cid] = PALETTE[cid - 1][::-1]  # BGR -> RGB for PIL
    return rgb


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
    att = sample.stage("attributes")
    if not att.get("emotion_probs"):
        return {}
    return {"emotion_estimated": att.get("emotion"),
            "emotion_proba": dict(zip(EMOTIONS, att["emotion_probs"]))}


def head_pose(sample: Sample) -> str:
    """"['pitch', 'yaw', 'roll']" in degrees, as the loader parses it (pose stage, else PnP)."""
    for stage in ("pose", "landmarks", "expression"):
        p = sample.stage(stage)
        if p.get("yaw") is not None:
            return "[" + ", ".join(f"'{p[a]:.7g}'" for a in ("pitch", "yaw", "roll")) + "]"
    return "['0', '0', '0']"


def write_sample(ctx: Context, sample: Sample, folder: str, n: str, mesh: dict[str, int]) -> dict[str, str]:
    """Every file of one sample; its CSV row (without the reference columns)."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(sample.files["jpg"])).convert("RGB"))
    h, w = image.shape[:2]
    path = {d: f"{folder}/{d}/{n}" for d in ("images", "images_v2", "landmarks", "masks", "msmasks",
                                              "captions", "attributes", "feat_file_v2")}
    ctx.writer.bytes(f"CASIA/{path['images']}.jpg", _jpeg(_resize(image)))
    ctx.writer.bytes(f"CASIA/{path['images_v2']}.png", png_bytes(image))
    lmk = np.load(io.BytesIO(sample.files["lmk.npy"]))[:, :2] / np.array([w, h], np.float64)
    mesh[str(len(lmk))] = mesh.get(str(len(lmk)), 0) + 1
    buf = io.StringIO()
    np.savetxt(buf, lmk, delimiter=",")
    ctx.writer.bytes(f"CASIA/{path['landmarks']}.csv", buf.getvalue().encode())
    ctx.writer.npy(f"CASIA/{path['landmarks']}.npy", heatmaps(lmk))
    if "mask.png" in sample.files:
        labels = np.asarray(Image.open(io.BytesIO(sample.files["mask.png"])))
        ctx.writer.bytes(f"CASIA/{path['masks']}.png", png_bytes(palette_mask(_resize(labels, nearest=True))))
    face = face_mask_of(sample)
    if face is not None:
        ctx.writer.bytes(f"CASIA/{path['msmasks']}.png", png_bytes(_resize(face, nearest=True)))
    caption, real = caption_of(sample)
    ctx.writer.json(f"CASIA/{path['captions']}.json", captions_json(sample, caption, real))
    ctx.writer.json(f"CASIA/{path['attributes']}.json", attributes_json(sample))
    emb = embedding_of(sample)
    ctx.writer.torch(f"CASIA/{path['feat_file_v2']}.pth", emb.reshape(1, -1))
    box = box_in_image(sample)
    pts = sample.stage("detect").get("points5")
    return {
        "face_file": f"{path['images']}.jpg", "depth_range": "", "label_uncertainty": "",
        "landmark_file": f"{path['landmarks']}.csv", "mask_file": f"{path['masks']}.png", "xyz_file": "",
        "annot_size": str(SIZE), "aligned_size": str(w),
        "src_nose_xy": _fmt(pts[4:6]) if pts else "",
        "bbox": _fmt(np.asarray(box) / np.array([w, h, w, h])) if box else "",
        "subject_id": sample.identity, "caption_file": f"{path['captions']}.json",
        "msmask_file": f"{path['msmasks']}.png", "msmask_score": "",
        "attr_file": f"{path['attributes']}.json", "feat_file": f"{path['feat_file_v2']}.pth",
        "caption": loader_caption(caption), "head_pose": head_pose(sample),
        "_dim": str(emb.shape[-1]), "_fallback": "" if real else "1",
    }


def export(ctx: Context) -> dict[str, Any]:
    """Write the CASIA_toy-like tree, the CSV, the subject list and the key map; counts."""
    if "images" in str(ctx.to.resolve()):
        ctx.warn("the --to path contains 'images': the loader's path.replace('images', ...) will break it")
    rows, skipped, mesh, number = [], 0, {}, defaultdict(int)
    keys_out: list[tuple[str, str, str]] = []
    for sample in ctx.samples():
        if "lmk.npy" not in sample.files or embedding_of(sample) is None:
            skipped += 1
            continue
        number[sample.identity] += 1
        folder = f"CASIAFaces/{sample.identity}"
        row = write_sample(ctx, sample, folder, f"{number[sample.identity]:03d}", mesh)
        rows.append(row)
        keys_out.append((sample.key, sample.identity, row["face_file"]))
    excluded = {k for k, r in (ctx.audit or {}).items() if r["exclude_from_pairing"]}
    reference: dict[str, dict[str, str]] = {}
    for (key, ident, _), row in zip(keys_out, rows):
        if ident not in reference or (reference[ident]["_excluded"] and key not in excluded):
            reference[ident] = {**row, "_excluded": key in excluded}
    for row in rows:
        ref = reference[row["subject_id"]]
        row["reference image"], row["reference image bbox"] = ref["face_file"], ref["bbox"]
    identities = sorted(reference)
    n_ids = len(identities)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    ctx.writer.bytes(f"CASIA/casiaFacesDataset256_{n_ids}_samples_headpose.csv", buf.getvalue().encode())
    ctx.writer.bytes(f"CASIA/CASIA_subject_{n_ids}_samples.txt",
                     "".join(f"{i.zfill(7)}\n" for i in identities).encode())
    kbuf = io.StringIO()
    kw = csv.writer(kbuf, lineterminator="\n")
    kw.writerow(("key", "identity", "face_file"))
    kw.writerows(keys_out)
    ctx.writer.bytes("CASIA/faceweave_keys.csv", kbuf.getvalue().encode())
    _warnings(ctx, rows, mesh, skipped)
    return {"samples": len(rows), "identities": n_ids, "fallback_captions": sum(bool(r["_fallback"]) for r in rows),
            "csv": f"CASIA/casiaFacesDataset256_{n_ids}_samples_headpose.csv",
            "subjects": f"CASIA/CASIA_subject_{n_ids}_samples.txt", "sample_num": n_ids}


def _warnings(ctx: Context, rows: list[dict], mesh: dict[str, int], skipped: int) -> None:
    if skipped:
        ctx.warn(f"{skipped} samples skipped: no landmarks (lmk.npy) or no identity embedding")
    if set(mesh) - {str(MESH_POINTS)}:
        ctx.warn(f"landmark meshes of {sorted(mesh)} points: the loader asserts {MESH_POINTS}-point "
                 f"heatmaps; run with --set landmarks.refine=true")
    dims = {r["_dim"] for r in rows}
    if dims - {str(FEAT_DIM)}:
        ctx.warn(f"identity embeddings of {sorted(dims)} values: the loader keeps only (1, {FEAT_DIM}) "
                 f"features (ArcFace, the full preset); other rows are silently dropped by it")
