"""The stage contract: a small dataclass whose fields are its config.

A stage declares, as class attributes, its name, version, what it reads, its columns (a pyarrow
schema from ``schemas/``), its per-sample files, its resources and the ``limits`` of its config
fields, and implements only its model work: ``setup()`` (weights, once per worker) and
``compute(batch)`` -> one ``Result`` per sample, on valid images only, with arrays for files
(``check_config()`` where ``limits`` do not say it all). ``process(batch)`` is the framework's side,
the one entry point callers use: setup once, bad images out, NaN/inf outputs out, files encoded.
Common model fields live in ``stages.model_stage.ModelStage``. Stages never import ray or ``pipeline``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from stages.types import (ERROR, NON_FINITE, OK, SKIPPED, STATUSES, Provenance, Result, Sample,  # noqa: F401
                          non_finite, valid_image)


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
    nan_columns: ClassVar[tuple[str, ...]] = ()
    """Columns in which NaN is a value (parsing's IoU of a class in neither map), not a failure."""
    gpus: ClassVar[float] = 0.0
    """Fraction of a GPU one worker needs; 0 for CPU stages."""
    produces_frame: ClassVar[str | None] = None
    """Set to ``aligned``/``restored`` when ``Result.frame`` replaces the image downstream."""
    needs_image: ClassVar[bool] = True
    mem_per_sample_mb: ClassVar[float] = 64.0
    """Accelerator memory one sample needs in a batch (for ``batch_size: 0`` = automatic)."""
    limits: ClassVar[dict[str, str | tuple]] = {}
    """Allowed config values, e.g. ``{"crop": "(0, 1]", "select": ("auto", "largest")}``
    (``stages/limits.py``; a subclass adds to its bases' limits)."""

    def setup(self) -> None:
        """Load weights once per worker."""

    def compute(self, batch: list[Sample]) -> list[Result]:
        """The model work on samples whose image is valid (or on every sample: needs_image=False)."""
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "setup" in cls.__dict__:  # a direct setup() call counts too: the framework never repeats it
            own = cls.__dict__["setup"]

            def setup(self: "Stage") -> None:
                own(self)
                self.__dict__["_set_up"] = True
            setup.__doc__ = own.__doc__
            cls.setup = setup  # type: ignore[method-assign]

    def ensure_setup(self) -> None:
        if not self.__dict__.get("_set_up"):
            self.setup()

    def process(self, batch: list[Sample]) -> list[Result]:
        """Framework side: setup once, ``bad_image`` rows without a model call, ``non_finite_output``
        rows where a column or file array holds a NaN or inf (none reaches a manifest), files encoded."""
        from stages.files import encode_file

        self.ensure_setup()
        results: list[Result | None] = [None] * len(batch)
        todo = [i for i, s in enumerate(batch) if not self.needs_image or valid_image(s.image)]
        for i in set(range(len(batch))) - set(todo):
            results[i] = Result.fail("bad_image")
        out = self.compute([batch[i] for i in todo]) if todo else []
        if len(out) != len(todo):
            raise RuntimeError(f"stage '{self.name}' returned {len(out)} results for {len(todo)} samples")
        for i, res in zip(todo, out):
            if res.status == OK and (non_finite([v for k, v in res.columns.items() if k not in self.nan_columns])
                                     or non_finite(list(res.files.values()))):
                res = Result.fail(NON_FINITE)
            res.files = {k: encode_file(k, v) for k, v in res.files.items()}
            results[i] = res
        return results  # type: ignore[return-value]

    def provenance(self) -> Provenance:
        """The model and weights behind this stage's columns (after setup)."""
        return Provenance()

    def resident_mb(self) -> float:
        """Memory its models hold once set up, MB (how many worker processes fit in RAM)."""
        return 0.0

    def stats(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Extra shard-level figures for the stats JSON (e.g. accuracy against ground truth)."""
        return {}

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Framework side, before any work: the declared ``limits``, then ``check_config()``."""
        from stages import limits

        limits.check(self)
        self.check_config()

    def check_config(self) -> None:
        """Checks beyond ``limits``: raise ValueError for a bad config or a missing weights file."""
