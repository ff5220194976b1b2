"""Safe image decoding: refuse bad or hostile bytes with a reason code instead of raising.

``probe`` reads the header only; ``decode_rgb`` decodes to an HxWx3 uint8 RGB array. Both
return a snake_case reason instead of raising for bad data:

- ``empty_file``: no bytes at all
- ``not_an_image``: PIL cannot identify the bytes (or the format is not one we decode)
- ``unsupported_format: <name>``: a known image format we do not decode (``heic``, ``heif``,
  ``avif`` where Pillow lacks it, ``jxl``, ``jpeg2000``, ``psd``, ``svg``), told by its signature
- ``truncated``: the header is fine but the pixel data is cut short or corrupt
- ``too_small``: a side is shorter than ``min_side``
- ``decompression_bomb``: width * height exceeds ``max_pixels`` (refused from the header,
  before any pixel is decoded; PIL's own hard cap also reports this reason)
- ``unsupported_mode: <mode>``: a pixel mode we do not convert (e.g. float ``F``)
- ``decode_memory: ...``: decoding would need more than ``max_decode_mb`` (pixels x the peak
  bytes per pixel of its mode, ``DECODE_BYTES_PER_PIXEL``); refused from the header, so a
  small 16-bit PNG of huge size cannot take gigabytes

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
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from pipeline.core import jpeg_layout

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MIN_SIDE = 16

# Only formats whose decoders run in-process (EPS would shell out to ghostscript);
# multi-picture JPEGs (format "MPO") open through the JPEG plugin.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF") + (("AVIF",) if features.check("avif") else ())
_PLAIN = {"RGB"}
_CONVERTIBLE = {"1", "L", "P", "RGBX", "CMYK", "YCbCr"}
_ALPHA = {"LA", "La", "PA", "RGBA", "RGBa"}
_SIXTEEN = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ORIENTATION_TAG = 0x0112
_SIXTEEN_TO_EIGHT = ((np.arange(65536, dtype=np.int64) * 255 + 32767) // 65535).astype(np.uint8)  # rounded v/257
DEFAULT_MAX_DECODE_MB = 1024
# Peak bytes per pixel of decoding one pixel mode to RGB here (Pillow's buffer, our conversion
# and the HxWx3 output, which numpy's asarray briefly holds twice), measured by
# bench/decode_memory.py and rounded up ~10%; modes not listed count as with alpha.
DECODE_BYTES_PER_PIXEL = {"1": 12, "L": 12, "P": 12, "RGB": 11, "RGBX": 16, "CMYK": 16, "YCbCr": 16,
                          "I;16": 9, "I;16L": 9, "I;16B": 9, "I;16N": 9, "I": 16}
_ALPHA_BYTES_PER_PIXEL = 28
# A progressive JPEG: libjpeg's whole-image coefficient buffer and the twin decode of the check
_MULTI_SCAN_BYTES_PER_PIXEL = 2


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
        kind = sniff_unsupported(data)
        if not kind or (kind == "avif" and "AVIF" in FORMATS):  # a broken AVIF, not a missing decoder
            return None, "not_an_image"
        return None, f"unsupported_format: {kind}"


_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_SIGNATURES = ((b"8BPS", "psd"), (b"\xff\x0a", "jxl"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jxl"),
               (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"), (b"\xff\x4f\xff\x51", "jpeg2000"))


def sniff_unsupported(data: bytes) -> str:
    """The name of a known image format we do not decode (``heic``, ``avif``...), or ""."""
    if data[4:8] == b"ftyp":  # ISO-BMFF: major brand, then compatible brands
        size = int.from_bytes(data[:4], "big")
        brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(size, 64), 4)}
        if brands & {b"avif", b"avis"}:
            return "avif"
        if brands & _HEIF_BRANDS:
            return "heic"
        if brands & {b"mif1", b"msf1"}:
            return "heif"
        return ""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "svg"
    return ""


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # unreadable EXIF is ignored, like a missing one
        return 1
    return value if 1 <= value <= 8 else 1


def decode_mb(width: int, height: int, mode: str, transparent: bool = False, progressive: bool = False) -> int:
    """Estimated peak MB of decoding a ``width`` x ``height`` image of ``mode`` to RGB."""
    per_pixel = _ALPHA_BYTES_PER_PIXEL if transparent else DECODE_BYTES_PER_PIXEL.get(mode, _ALPHA_BYTES_PER_PIXEL)
    if progressive:
        per_pixel += _MULTI_SCAN_BYTES_PER_PIXEL
    return -(-width * height * per_pixel // 1_000_000)


def _limits(im: Image.Image, max_pixels: int, min_side: int, max_decode_mb: int) -> str:
    """The reason the header refuses the image, or "" (all checks are orientation-invariant)."""
    width, height = im.size
    mode = im.mode
    if width * height > max_pixels:
        return "decompression_bomb"
    if min(width, height) < min_side:
        return "too_small"
    if mode not in _PLAIN | _CONVERTIBLE | _ALPHA | _SIXTEEN:
        return f"unsupported_mode: {mode}"
    need = decode_mb(width, height, mode, mode == "P" and "transparency" in im.info,
                     bool(im.info.get("progressive") or im.info.get("progression")))
    if need > max_decode_mb:
        return f"decode_memory: {width}x{height} {mode} needs ~{need} MB, over max_decode_mb={max_decode_mb}"
    return ""


def _probe_open(im: Image.Image, max_pixels: int, min_side: int,
                max_decode_mb: int = DEFAULT_MAX_DECODE_MB) -> tuple[Probe | None, str]:
    """Probe an opened image and check its size, mode and decode memory against the limits.

    The limits are checked first: reading EXIF can decode the whole file (PNG keeps it after
    the pixel data), which is what the limits must prevent.
    """
    width, height = im.size
    mode = im.mode
    reason = _limits(im, max_pixels, min_side, max_decode_mb)
    if reason:
        note = f"converted:{mode}->RGB" if mode in _CONVERTIBLE | _ALPHA | _SIXTEEN else ""
        return Probe(width, height, im.format or "", mode, note), reason
    orientation = _orientation(im)
    notes = []
    if mode not in _PLAIN:
        notes.append(f"converted:{mode}->RGB")
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if orientation != 1:
        notes.append(f"exif_transpose:{orientation}")
    n_frames = getattr(im, "n_frames", 1) if getattr(im, "is_animated", False) else 1
    if n_frames > 1:
        notes.append(f"first_frame_of:{n_frames}")
    return Probe(width, height, im.format or "", mode, ";".join(notes)), ""


def probe(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE,
    max_decode_mb: int = DEFAULT_MAX_DECODE_MB,
) -> tuple[Probe | None, str]:
    """Read the header only: (probe, "") or (probe or None, reason)."""
    im, reason = _open(data)
    if im is None:
        return None, reason
    try:
        return _probe_open(im, max_pixels, min_side, max_decode_mb)
    except Exception:
        return None, "not_an_image"
    finally:
        im.close()


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a loaded image of a supported mode to HxWx3 uint8 RGB."""
    mode = im.mode
    if mode in _SIXTEEN:
        values = np.asarray(im)
        if values.dtype != np.uint16:  # mode I: 32-bit signed
            values = np.clip(values, 0, 65535).astype(np.uint16)
        gray = _SIXTEEN_TO_EIGHT[values]  # a table, not int64 arithmetic: 1 byte per pixel
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in _ALPHA or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb = im if im.mode == "RGB" else im.convert("RGB")  # convert() would copy an RGB image too
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def decode_rgb(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE,
    max_decode_mb: int = DEFAULT_MAX_DECODE_MB,
) -> tuple[np.ndarray | None, Probe | None, str]:
    """Decode to (HxWx3 uint8 RGB, probe, "") or (None, probe or None, reason)."""
    im, reason = _open(data)
    if im is None:
        return None, None, reason
    opened: list[Image.Image] = []
    try:
        try:
            info, reason = _probe_open(im, max_pixels, min_side, max_decode_mb)
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
                twin = None
                if im.format in ("JPEG", "MPO"):
                    source, twin, reason = jpeg_layout.checked_source(im, data)
                    if source is None:
                        return None, info, reason
                    opened += [x for x in (source, twin) if x is not None and x is not im]
                else:
                    source = im
                source.load()
                if twin is not None:
                    twin.load()
                    same = jpeg_layout.same_pixels(source, twin)
                    twin.close()
                    if not same:
                        return None, info, "truncated"
                frame = ImageOps.exif_transpose(source) if "exif_transpose" in info.note else source
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
        for other in opened:
            other.close()
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
