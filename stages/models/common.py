"""Shared model helpers: device and dtype handling, strict state-dict loading, random init.

Models are kept in fp32 and run under ``torch.autocast`` for bf16/fp16, so a low-precision run
never changes the stored weights and numerically touchy ops (softmax, norms) stay in fp32.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from stages.base import Provenance
from stages.models import registry

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RANDOM_SEED = 0
"""Random-weights models are seeded so their (meaningless) outputs are at least reproducible."""


def facexlib(module: str, name: str) -> Any:
    """``name`` from the facexlib module (which imports torchvision); a torchvision built for
    another torch (its C++ ops do not load: "operator torchvision::nms does not exist") is named
    with the fix, in one line."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        from importlib import metadata

        raise RuntimeError(f"torchvision {metadata.version('torchvision')} was built for another torch than "
                           f"torch {torch.__version__} ({exc}); install both from one index, e.g. pip install "
                           f"torch torchvision --index-url https://download.pytorch.org/whl/cpu") from None


def check_device(device: str) -> None:
    """Raise ValueError for a device string that is not auto, cpu, cuda or cuda:N."""
    if device in ("auto", "cpu", "cuda"):
        return
    if device.startswith("cuda:") and device[5:].isdigit():
        return
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def torch_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available else cpu; cuda without a GPU raises RuntimeError."""
    if isinstance(device, torch.device):
        return device
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}") from None


def check_weights(name: str, weights: str, root: str | os.PathLike | None = None) -> None:
    """With pretrained weights, the file must exist and verify (MissingWeights, BadChecksum)."""
    registry.get(name)
    if weights == "pretrained":
        registry.resolve(name, root)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for bf16/fp16; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def strip_prefix(state: dict[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Drop a DataParallel-style prefix when every key carries it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_into(model: nn.Module, state: dict[str, Any], strict: bool = True) -> nn.Module:
    """Load ``state`` into ``model``; a key or shape mismatch raises ValueError naming keys."""
    state = strip_prefix(dict(state))
    own = model.state_dict()
    if strict:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"state dict does not match {type(model).__name__}: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:3]})"
            )
    bad = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"shape mismatch for {len(bad)} keys, e.g. {k}: "
                         f"{tuple(state[k].shape)} vs {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=strict)
    return model


def on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An NCHW batch on ``device``, channels-last like the nets (``prepare``)."""
    return t.to(device).contiguous(memory_format=torch.channels_last)


def prepare(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Eval mode, no grads, on ``device``, channels-last: on the CPU too, where oneDNN's depthwise
    convolutions (the lite preset's mobile nets) ran ~10x faster that way on an AVX2 EPYC, whole
    mobile nets 1.2-1.5x and a ResNet50 1.1x (docs/benchmarks.md); CUDA convolutions prefer it too."""
    dev = torch_device(device)
    return model.eval().requires_grad_(False).to(dev).to(memory_format=torch.channels_last)


def build(constructor: Callable[[], nn.Module], name: str, root: str | os.PathLike | None = None,
          device: str | torch.device = "cpu", random_init: bool = False) -> nn.Module:
    """Construct the architecture, then load ``name``'s verified weights unless random_init."""
    if random_init:
        registry.get(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = constructor()
    else:
        state = registry.load_state_dict(name, root)  # verify before spending time on building
        model = load_into(constructor(), state, strict=True)
    return prepare(model, device)


def provenance(name: str, random_init: bool, root: str | os.PathLike | None = None,
               path: Path | None = None) -> Provenance:
    """The provenance of a model built by ``build``: no file behind random weights; ``path`` is
    where the file was loaded from when not ``root`` (only read for an unpinned entry)."""
    spec = registry.get(name)
    if random_init:
        return Provenance(model=name, weights="", weights_sha256="", weights_random=True)
    # an unpinned entry loaded with allow_unverified still records what was actually loaded
    sha = spec.sha256 or registry.sha256_of(path or registry.path_of(name, root))
    return Provenance(model=name, weights=spec.filename, weights_sha256=sha, weights_random=False)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
