"""Encoding a stage's per-sample files: a stage returns arrays, the framework writes the bytes.

The suffix decides the encoding: ``.npy`` (``np.save``), ``.png`` (lossless; uint8 label maps,
uint16 depth, RGB images) and ``.jpg`` (RGB, quality 95). Bytes pass through unchanged.
"""
from __future__ import annotations

import io

import cv2
import numpy as np

JPEG_QUALITY = 95


def encode_file(suffix: str, value: bytes | np.ndarray) -> bytes:
    """The stored bytes of one per-sample file."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    array = np.asarray(value)
    ext = suffix.rsplit(".", 1)[-1]
    if ext == "npy":
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return buf.getvalue()
    if ext not in ("png", "jpg"):
        raise ValueError(f"no encoder for file '{suffix}': return bytes, or name it .npy/.png/.jpg")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == "jpg" else []
    ok, buf = cv2.imencode(f".{ext}", array, params)
    if not ok:
        raise ValueError(f"{ext} encoding of '{suffix}' failed")
    return buf.tobytes()
