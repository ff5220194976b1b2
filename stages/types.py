"""The data a stage sees and returns: statuses, ``Sample``, ``Result``, ``Provenance``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

OK, SKIPPED, ERROR = "ok", "skipped", "error"
STATUSES = (OK, SKIPPED, ERROR)


def valid_image(image: object) -> bool:
    """An HxWx3 uint8 array with both sides at least 2 pixels."""
    return (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype == np.uint8 and min(image.shape[:2]) >= 2)


@dataclass
class Provenance:
    """Which model and weights produced a stage's columns (recorded on every manifest row)."""

    model: str = ""
    weights: str = ""
    weights_sha256: str = ""
    weights_random: bool = False


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
