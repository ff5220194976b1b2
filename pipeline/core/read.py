"""Reading inputs: each file is read once per run, hashed, checked against the plan, decoded.

The first stage group of a run reads the shard's files here (there is no separate source step
that reads them too): the bytes are hashed, their size compared with the plan and their sha256
with the source manifest of an earlier run, and the decoded image goes straight to the group's
stages. A file that vanished, escapes the input folder or changed since planning becomes that
sample's error row (``input_missing``, ``link_escapes_input``, ``input_changed``), never an
abort. Later steps (pack included) never go back to the input folder.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core import imaging
from stages.base import ERROR, OK
from stages.jpeg import jpeg_quality_from_bytes

SOURCE = "source"
SOURCE_IMAGE = "image.jpg"
"""The verified input image kept in the source payload when no stage of the run makes a frame,
so pack never reads the input folder."""
JPEG_QUALITY = 95


@dataclass
class Input:
    """One sample as read: its source manifest record, decoded image and verified bytes."""

    record: dict[str, Any]
    image: np.ndarray | None = None
    data: bytes | None = None


def read_bytes(source: Any, location: str) -> tuple[bytes | None, str]:
    """The raw bytes, or None and a reason for a file that cannot be read any more."""
    try:
        return source.read(location), ""
    except FileNotFoundError:
        return None, "input_missing: the file is gone since planning"
    except ValueError as exc:  # safe_join: a link (or location) that leaves the input folder
        if "escapes" in str(exc):
            return None, "link_escapes_input"
        return None, f"unreadable: {exc}"[:300]
    except RuntimeError:  # pathlib: a symlink loop
        return None, "link_loop"
    except OSError as exc:
        return None, f"unreadable: {type(exc).__name__}"


def verify(data: bytes, expected_sha: str | None, expected_size: int | None) -> str:
    """'' when the bytes are what was planned / recorded, else an ``input_changed`` reason."""
    if expected_size is not None and len(data) != expected_size:
        return f"input_changed: {len(data)} bytes, planned {expected_size}"
    if expected_sha and hashlib.sha256(data).hexdigest() != expected_sha:
        return "input_changed: sha256 differs from the source manifest"
    return ""


def read_input(ctx: Any, source: Any, row: dict[str, Any]) -> Input:
    """Read one planned file once: the source manifest record plus the decoded image; bytes that
    no longer have the planned size make the sample ``input_changed``.
    """
    rec = {"key": row["key"], "identity": row["identity"], "location": row["location"],
           "meta": row["meta"], "sha256": None, "bytes": None, "width": None, "height": None,
           "format": None, "mode": None, "note": None, "jpeg_quality": None, "status": OK,
           "error": row["error"]}
    item = Input(rec)
    if rec["error"]:
        return _finish(item)
    data, reason = read_bytes(source, row["location"])
    if data is None:
        if reason.startswith("input_missing") and row.get("size") is None:
            reason = "unreadable: FileNotFoundError"  # never readable (e.g. a dangling link), not gone
        rec["error"] = reason
        return _finish(item)
    rec["error"] = verify(data, None, row.get("size"))
    if rec["error"]:
        return _finish(item)
    rec["sha256"], rec["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    # PIL's full decode is also the validity check (truncated scans, decode-memory guard), so the
    # first read decodes on the CPU even where later reads batch-decode on the GPU.
    image, probe, reason = imaging.decode_rgb(data, ctx.max_pixels, ctx.min_side, ctx.max_decode_mb)
    if probe is not None:
        rec.update(width=probe.width, height=probe.height, format=probe.format, mode=probe.mode,
                   note=probe.note)
        if probe.format == "JPEG":
            rec["jpeg_quality"] = jpeg_quality_from_bytes(data)
    rec["error"] = reason
    if not reason:
        item.image, item.data = image, data
    return _finish(item)


def reread(source: Any, record: dict[str, Any], max_pixels: int, min_side: int,
           max_decode_mb: int = imaging.DEFAULT_MAX_DECODE_MB) -> tuple[np.ndarray | None, str]:
    """A later run's read of an already recorded file, checked against its recorded sha256."""
    data, reason = read_bytes(source, record["location"])
    if data is None:
        return None, reason
    reason = verify(data, record["sha256"], record["bytes"])
    if reason:
        return None, reason
    image, _, reason = imaging.decode_rgb(data, max_pixels, min_side, max_decode_mb)
    return (image, "") if image is not None else (None, f"decode_failed: {reason}")


def extra_files(source: Any, record: dict[str, Any]) -> tuple[dict[str, bytes], str]:
    """Files the source carries for this sample (e.g. ground-truth masks), or an error reason."""
    try:
        return source.extra_files(record["location"], json.loads(record["meta"] or "{}")), ""
    except (OSError, ValueError) as exc:
        return {}, f"extra_files_failed: {type(exc).__name__}: {exc}"[:300]


def image_member(item: Input) -> bytes:
    """The shard image for a frameless run: the original JPEG bytes when clean, else a JPEG."""
    import cv2

    if item.record["format"] == "JPEG" and not item.record["note"] and item.data is not None:
        return item.data  # no second generation loss
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(item.image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _finish(item: Input) -> Input:
    item.record["status"] = ERROR if item.record["error"] else OK
    return item
