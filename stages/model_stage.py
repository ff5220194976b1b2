"""The fields and plumbing every model stage shares, declared once.

A model stage subclasses ``ModelStage`` (a ``Stage``), redeclares ``model`` with its own default
and docstring, names the registry entry of its weights (``weights_name``), and implements
``load()`` (build the net on ``self._device``) and ``process()``. Checks of the common fields,
device/dtype resolution, weight verification before any work and provenance come from here.
"""
from __future__ import annotations

from dataclasses import dataclass

from stages.base import Provenance, Stage


@dataclass
class ModelStage(Stage):
    model: str = ""
    """Registry name of the model (each stage lists its choices)."""
    weights: str = "pretrained"
    """pretrained (verified file) or random (real architecture, seeded random init; tests only)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: str = "fp32"
    """fp32, bf16 or fp16 (autocast; weights stay fp32)."""
    batch_size: int = 32
    """Samples per forward pass (0: as many as fit in ~70% of free GPU memory)."""
    weights_dir: str | None = None
    """Weights directory (the runner fills it from --weights-dir)."""

    @property
    def weights_name(self) -> str:
        """The registry entry of the weights file (the model name unless a stage maps it)."""
        return self.model

    @property
    def random_weights(self) -> bool:
        return self.weights == "random"

    def check(self) -> None:
        from stages.models import common

        common.check_common(self.device, self.dtype, self.weights, max(self.batch_size, 1))
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {self.batch_size}")
        self.check_model()
        common.check_weights(self.weights_name, self.weights, self.weights_dir)

    def check_model(self) -> None:
        """Stage-specific config checks (raise ValueError)."""

    def setup(self) -> None:
        from stages.models import common

        self._device = common.torch_device(self.device)
        self._dtype = common.torch_dtype(self.dtype)
        self._net = self.load()

    def load(self):  # noqa: ANN201 - returns the stage's nn.Module
        """Build the model on ``self._device`` (verified weights, or random with ``weights: random``)."""
        from stages.models import load

        return load(self.weights_name, self.weights_dir, device=self._device, dtype=self.dtype,
                    random_init=self.random_weights)

    def resident_mb(self) -> float:
        """fp32 weights in memory are about their file's size; 500 MB when the registry has none."""
        from stages.models import registry

        try:
            size = registry.get(self.weights_name).size
        except KeyError:
            size = 0
        return 1.2 * size / 2**20 if size else 500.0

    def provenance(self) -> Provenance:
        from stages.models import common

        return common.provenance(self.weights_name, self.random_weights, self.weights_dir)
