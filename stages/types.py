"""The data a stage sees and returns: statuses, ``Sample``, ``Result``, ``Provenance``."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OK, SKIPPED, ERROR = "ok", "skipped", "error"
STATUSES = (OK, SKIPPED, ERROR)
NON_FINITE = "non_finite_output"
"""The reason of a row whose model output (a column or a file array) held a NaN or inf."""


def valid_image(image: object) -> bool:
    """An HxWx3 uint8 array with both sides at least 2 pixels."""
    return (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype == np.uint8 and min(image.shape[:2]) >= 2)


def finite(values: Any, n: int, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """``n`` finite numbers as a float64 array (of ``shape`` when given), else None."""
    if values is None:
        return None
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size != n or not np.all(np.isfinite(a)):
        return None
    return a.reshape(shape) if shape else a


def non_finite(value: Any) -> bool:
    """Whether a column value or file array holds a NaN or inf (floats, float arrays, nested lists)."""
    if isinstance(value, (float, np.floating)):
        return not math.isfinite(value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "fc" and not np.isfinite(value).all()
    if isinstance(value, (list, tuple)):
        return any(non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    return False


@dataclass
class Provenance:
    """Which model and weights produced a stage's columns (recorded on every manifest row)."""

    model: str = ""
    weights: str = ""
    weights_sha256: str = ""
    weights_random: bool = False

    @staticmethod
    def combine(parts: list["Provenance"]) -> "Provenance":
        """One provenance for a stage running several models: names joined, the sha256 of their
        ``model:sha256`` lines, random when any part is."""
        if len(parts) == 1:
            return parts[0]
        import hashlib

        lines = "".join(f"{p.model}:{p.weights_sha256}\n" for p in parts)
        return Provenance(model="+".join(p.model for p in parts), weights=",".join(p.weights for p in parts),
                          weights_sha256=hashlib.sha256(lines.encode()).hexdigest(),
                          weights_random=any(p.weights_random for p in parts))


@dataclass
class Sample:
    """One sample as a stage sees it."""

    key: str
    identity: str
    image: np.ndarray | None
    """HxWx3 uint8 RGB: the frame this stage works in (source, aligned or restored)."""
    frame: str = "source"
    """Which frame ``image`` is: ``source``, ``aligned`` or ``restored``."""
    upstream: dict[str, "Result"] = field(default_factory=dict)
    """Results of ``reads`` (always) and ``optional_reads`` (when run and ok) for this sample."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source manifest columns (location, width, height, ...)."""

    def points5(self) -> np.ndarray | None:
        """detect's five points, (5, 2) in this frame (``points5`` in the source photo,
        ``points5_crop`` in a crop); None without a usable detect row."""
        det = self.upstream.get("detect")
        key = "points5" if self.frame == "source" else "points5_crop"
        return finite(det.columns.get(key), 10, (5, 2)) if det is not None else None

    def box(self) -> np.ndarray | None:
        """detect's face box (x1, y1, x2, y2) when this frame is the source photo, else None."""
        det = self.upstream.get("detect")
        return finite(det.columns.get("box"), 4) if det is not None and self.frame == "source" else None


@dataclass
class Result:
    """One sample's output of one stage."""

    status: str = OK
    error: str = ""
    """Short snake_case reason, optionally followed by ': detail'."""
    columns: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    """Per-sample files: suffix (e.g. ``lmk.npy``) -> array (encoded by ``run``) or bytes."""
    frame: np.ndarray | None = None
    """A new image frame for downstream stages (detect's aligned crop, restore's output)."""

    @classmethod
    def fail(cls, reason: str, status: str = ERROR) -> "Result":
        return cls(status=status, error=reason)
