"""The stage contract: a small dataclass whose fields are its config.

A stage declares, as class attributes, its name, version, the upstream stages it reads, the
columns it writes (a pyarrow schema from ``schemas/``), the per-sample files it writes and its
resource request. ``setup()`` loads weights once per worker; ``process(batch)`` returns one
``Result`` per sample, marking failures with a status and reason instead of raising.

Stages never import ray or ``pipeline``; the runner drives them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

OK, SKIPPED, ERROR = "ok", "skipped", "error"
STATUSES = (OK, SKIPPED, ERROR)


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
    files: dict[str, bytes] = field(default_factory=dict)
    """Per-sample payload files: member suffix (e.g. ``lmk.npy``) -> encoded bytes."""
    frame: np.ndarray | None = None
    """A new image frame for downstream stages (detect's aligned crop, restore's output)."""

    @classmethod
    def fail(cls, reason: str, status: str = ERROR) -> "Result":
        return cls(status=status, error=reason)


@dataclass
class Stage:
    """Base class: subclass as a dataclass, set the class attributes, implement process()."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    reads: ClassVar[tuple[str, ...]] = ()
    """Upstream stages whose results this stage needs (pulled into a run automatically)."""
    optional_reads: ClassVar[tuple[str, ...]] = ()
    """Upstream stages used when they are part of the run (never pulled in, never blocking)."""
    schema: ClassVar[pa.Schema] = pa.schema([])
    """The stage's own manifest columns (common columns are added by the runner)."""
    files: ClassVar[tuple[str, ...]] = ()
    """Suffixes of the per-sample files it writes, e.g. ``("lmk.npy", "depth.png")``."""
    gpus: ClassVar[float] = 0.0
    """Fraction of a GPU one worker needs; 0 for CPU stages."""
    produces_frame: ClassVar[str | None] = None
    """Set to ``aligned``/``restored`` when ``Result.frame`` replaces the image downstream."""
    needs_image: ClassVar[bool] = True
    mem_per_sample_mb: ClassVar[float] = 64.0
    """Accelerator memory one sample needs in a batch (for ``batch_size: 0`` = automatic)."""

    def setup(self) -> None:
        """Load weights once per worker."""

    def process(self, batch: list[Sample]) -> list[Result]:
        raise NotImplementedError

    def provenance(self) -> Provenance:
        """The model and weights behind this stage's columns (after setup)."""
        return Provenance()

    def stats(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Extra shard-level figures for the stats JSON (e.g. accuracy against ground truth)."""
        return {}

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Raise ValueError for a bad config or missing weights file, before any work starts."""
