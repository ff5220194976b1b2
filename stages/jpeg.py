"""JPEG quality from a file's quantisation tables (numpy + Pillow only: the source step uses it)."""
from __future__ import annotations

import functools
import io

import numpy as np

# IJG (libjpeg) luminance quantisation table at quality 50, natural (row-major) order
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


def ijg_table(quality: int) -> np.ndarray:
    """The IJG luminance table libjpeg writes at ``quality`` (1-100)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((IJG_LUMA * scale + 50) / 100), 1, 255)


def jpeg_quality_from_bytes(data: bytes) -> int | None:
    """IJG quality whose luminance table is closest to the file's first DQT table; None if no JPEG."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            tables = getattr(im, "quantization", None) or {}
    except Exception:  # noqa: BLE001 - any unreadable header means "unknown"
        return None
    if 0 not in tables or len(tables[0]) != 64:
        return None
    table = np.asarray(tables[0], dtype=np.float64)  # Pillow returns natural order
    return int(np.abs(_ijg_tables() - table).sum(axis=1).argmin()) + 1  # ties: the lowest quality


@functools.cache
def _ijg_tables() -> np.ndarray:
    """(100, 64): the table of every quality 1-100 (the source step asks once per JPEG)."""
    return np.stack([ijg_table(q) for q in range(1, 101)])
