"""A stage that does nothing (needs no image): measures the runner's own overhead per sample."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from stages.base import Result, Sample, Stage


@dataclass
class NoopStage(Stage):
    """Returns an ok row per sample without looking at it."""

    name: ClassVar[str] = "noop"
    schema: ClassVar[pa.Schema] = pa.schema([pa.field("n", pa.int32())])
    needs_image: ClassVar[bool] = False

    batch_size: int = 256
    """Samples per process() call."""

    def process(self, batch: list[Sample]) -> list[Result]:
        return [Result(columns={"n": i}) for i in range(len(batch))]


def register() -> None:
    import stages

    stages.register("noop", __name__)
