"""The fields and plumbing every model stage shares, declared once.

``DeviceStage`` is a stage that runs nets: its device, precision, batch size and weights
directory, their checks, device resolution at setup and batches as tensors (``tensor``,
``inference``). Stages with several models of their own (attributes, quality, caption,
detail_caption) subclass it directly. ``ModelStage`` adds the one registry model most stages
run: a model stage redeclares ``model`` with its own default and docstring, names the registry
entry of its weights (``weights_name``) and the ``families`` its model may come from, and
implements ``compute()`` (plus ``load()`` where the registry's loader does not fit); weight
verification before any work, loading and provenance come from here.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from stages.base import Provenance, Stage

WEIGHTS = ("pretrained", "random")


@dataclass
class DeviceStage(Stage):
    limits: ClassVar[dict[str, str | tuple]] = {"batch_size": "[0, inf)"}

    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: str = "fp32"
    """fp32, bf16 or fp16 (autocast; weights stay fp32)."""
    batch_size: int = 32
    """Samples per forward pass (0: as many as fit in ~70% of free GPU memory)."""
    weights_dir: str | None = None
    """Weights directory (the runner fills it from --weights-dir)."""

    def check(self) -> None:
        from stages.models import common

        common.check_device(self.device)
        common.torch_dtype(self.dtype)  # ValueError naming the choices (common.DTYPES)
        super().check()

    def setup(self) -> None:
        from stages.models import common

        self._device = common.torch_device(self.device)
        self._dtype = common.torch_dtype(self.dtype)

    @property
    def load_dtype(self):  # noqa: ANN201 - a torch.dtype
        """For models loaded whole in one precision (Hugging Face): the configured one on a GPU,
        fp32 on the CPU (where bf16/fp16 kernels are slow or missing)."""
        import torch

        return self._dtype if self._device.type == "cuda" else torch.float32

    def tensor(self, images: np.ndarray | list[np.ndarray], divide: float = 255.0,  # noqa: ANN201
               subtract: float = 0.0):
        """NCHW float batch on the stage's device from NHWC uint8 (``x / divide - subtract``)."""
        import torch

        x = torch.from_numpy(np.stack(images) if isinstance(images, list) else images)
        return self.to_device(x.to(self._device).permute(0, 3, 1, 2).float().div_(divide).sub_(subtract))

    def to_device(self, t):  # noqa: ANN001, ANN201 - torch.Tensor in and out
        """An NCHW batch on the stage's device, channels-last like its net (``common.on_device``)."""
        from stages.models import common

        return common.on_device(t, self._device)

    def inference(self) -> contextlib.AbstractContextManager:
        """No autograd, and the configured mixed precision."""
        import torch

        from stages.models import common

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(common.autocast(self._device, self._dtype))
        return stack


@dataclass
class ModelStage(DeviceStage):
    families: ClassVar[tuple[str, ...]] = ()
    """Registry families the model must come from (empty: any)."""
    models: ClassVar[dict[str, str | tuple[str, ...]]] = {}
    """Named model choices -> the registry entry of their weights (a tuple: the entries it accepts,
    the default first); they are ``model``'s limits. Empty: ``model`` is a registry name itself."""
    limits: ClassVar[dict[str, str | tuple]] = {"weights": WEIGHTS}

    model: str = ""
    """Registry name of the model (each stage lists its choices)."""
    weights: str = "pretrained"
    """pretrained (verified file) or random (real architecture, seeded random init; tests only)."""

    def __init_subclass__(cls, **kwargs) -> None:  # noqa: ANN003
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("models"):  # the named choices are model's limits
            cls.limits = {"model": tuple(cls.models), **cls.__dict__.get("limits", {})}

    @property
    def weights_name(self) -> str:
        """The registry entry of the weights file: the model's default in ``models``, else its name."""
        entry = self.models.get(self.model, self.model)
        return entry if isinstance(entry, str) else entry[0]

    @property
    def random_weights(self) -> bool:
        return self.weights == "random"

    @property
    def verify_weights(self) -> bool:
        """Whether check() insists on the verified weights file (False: a stage fetches its own)."""
        return True

    def check(self) -> None:
        from stages.models import common, registry

        if self.families and registry.get(self.weights_name).family not in self.families:
            raise ValueError(f"model {self.model!r} is not a {' or '.join(self.families)} model")
        super().check()
        if self.verify_weights:
            common.check_weights(self.weights_name, self.weights, self.weights_dir)

    def setup(self) -> None:
        super().setup()
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

    def weights_path(self):  # noqa: ANN201 - a Path, or None for the registry's place
        """Where the loaded weights file is, when not in the weights directory (e.g. a hub cache)."""
        return None

    def provenance(self) -> Provenance:
        """Worked out once per instance: the runner asks per row, and an unpinned file is hashed."""
        from stages.models import common

        if "_provenance" not in self.__dict__:
            self.__dict__["_provenance"] = common.provenance(self.weights_name, self.random_weights,
                                                             self.weights_dir, self.weights_path())
        return self.__dict__["_provenance"]
