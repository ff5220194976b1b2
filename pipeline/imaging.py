"""Safe image decoding: refuse bad or hostile bytes with a reason code instead of raising.

``probe`` reads the header only; ``decode_rgb`` decodes to an HxWx3 uint8 RGB array. Both
return a snake_case reason instead of raising for bad data:

- ``empty_file``: no bytes at all
- ``not_an_image``: PIL cannot identify the bytes (or the format is not one we decode)
- ``truncated``: the header is fine but the pixel data is cut short or corrupt
- ``too_small``: a side is shorter than ``min_side``
- ``decompression_bomb``: width * height exceeds ``max_pixels`` (refused from the header,
  before any pixel is decoded; PIL's own hard cap also reports this reason)
- ``unsupported_mode: <mode>``: a pixel mode we do not convert (e.g. float ``F``)

Successful conversions are recorded in ``Probe.note`` as ``;``-joined items:
``converted:<mode>->RGB`` (alpha is composited on white, because transparent pixels usually
hold black and a black backdrop around a cut-out face looks like a real dark background),
``exif_transpose:<orientation>`` and ``first_frame_of:<n>`` for animated images.
16-bit images are scaled to 8 bits (value / 257), not clipped.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MIN_SIDE = 16

# Only formats whose decoders run in-process (EPS would shell out to ghostscript);
# multi-picture JPEGs (format "MPO") open through the JPEG plugin.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_PLAIN = {"RGB"}
_CONVERTIBLE = {"1", "L", "P", "RGBX", "CMYK", "YCbCr"}
_ALPHA = {"LA", "La", "PA", "RGBA", "RGBa"}
_SIXTEEN = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ORIENTATION_TAG = 0x0112


@dataclass
class Probe:
    """What the header says about an image (size after EXIF orientation)."""

    width: int
    height: int
    format: str
    mode: str
    note: str = ""


def _open(data: bytes) -> tuple[Image.Image | None, str]:
    """Open the header; (image, "") or (None, reason)."""
    if not data:
        return None, "empty_file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=FORMATS), ""
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "decompression_bomb"
    except (UnidentifiedImageError, Exception):  # incl. headers broken in unclassified ways
        return None, "not_an_image"


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # unreadable EXIF is ignored, like a missing one
        return 1
    return value if 1 <= value <= 8 else 1


def _probe_open(im: Image.Image, max_pixels: int, min_side: int) -> tuple[Probe | None, str]:
    """Probe an opened image and check its size and mode against the limits."""
    width, height = im.size
    orientation = _orientation(im)
    notes = []
    mode = im.mode
    if mode not in _PLAIN:
        notes.append(f"converted:{mode}->RGB")
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if orientation != 1:
        notes.append(f"exif_transpose:{orientation}")
    n_frames = getattr(im, "n_frames", 1) if getattr(im, "is_animated", False) else 1
    if n_frames > 1:
        notes.append(f"first_frame_of:{n_frames}")
    probe_ = Probe(width, height, im.format or "", im.mode, ";".join(notes))
    if width * height > max_pixels:
        return probe_, "decompression_bomb"
    if min(width, height) < min_side:
        return probe_, "too_small"
    if mode not in _PLAIN | _CONVERTIBLE | _ALPHA | _SIXTEEN:
        probe_.note = ""
        return probe_, f"unsupported_mode: {mode}"
    return probe_, ""


def probe(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE
) -> tuple[Probe | None, str]:
    """Read the header only: (probe, "") or (probe or None, reason)."""
    im, reason = _open(data)
    if im is None:
        return None, reason
    try:
        return _probe_open(im, max_pixels, min_side)
    except Exception:
        return None, "not_an_image"
    finally:
        im.close()


def _jpeg_complete(data: bytes) -> bool:
    """An end-of-image marker follows the last start-of-scan (neither can occur in scan data)."""
    sos = data.rfind(b"\xff\xda")
    return sos >= 0 and data.find(b"\xff\xd9", sos) >= 0


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a loaded image of a supported mode to HxWx3 uint8 RGB."""
    mode = im.mode
    if mode in _SIXTEEN:
        values = np.asarray(im).astype(np.int64)
        gray = np.clip(values, 0, 65535) * 255 + 32767  # rounded value / 257
        gray = (gray // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in _ALPHA or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def decode_rgb(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE
) -> tuple[np.ndarray | None, Probe | None, str]:
    """Decode to (HxWx3 uint8 RGB, probe, "") or (None, probe or None, reason)."""
    im, reason = _open(data)
    if im is None:
        return None, None, reason
    try:
        try:
            info, reason = _probe_open(im, max_pixels, min_side)
        except Exception:
            return None, None, "not_an_image"
        if reason:
            return None, info, reason
        # A truncated file must fail, not come back half grey.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.seek(0)
                im.load()
                if im.format in ("JPEG", "MPO") and not _jpeg_complete(data):
                    return None, info, "truncated"
                frame = ImageOps.exif_transpose(im) if "exif_transpose" in info.note else im
                rgb = _to_rgb(frame)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return None, info, "decompression_bomb"
        except MemoryError:
            return None, info, "decompression_bomb"
        except Exception:
            return None, info, "truncated"
        if rgb.shape[:2] != (info.height, info.width):
            info.width, info.height = rgb.shape[1], rgb.shape[0]
        return rgb, info, ""
    finally:
        im.close()


def decode_jpeg_batch(datas: list[bytes], device: str = "cuda") -> list[np.ndarray | None]:
    """Decode already-validated baseline RGB/gray JPEGs in one batched call (nvJPEG on CUDA).

    For files the source step found clean (format JPEG, no conversion or EXIF note): the caller
    falls back to ``decode_rgb`` for any None. Pixels can differ from PIL's by an IDCT rounding
    step, so the decode device is part of the lineage of stages that see the source frame.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        images = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, ValueError):
        return [None] * len(datas)
    return [np.ascontiguousarray(im.permute(1, 2, 0).cpu().numpy()) for im in images]
