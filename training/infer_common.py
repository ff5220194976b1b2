"""What the inference entry points share: decoded images and config options on the command line."""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """HxWx3 uint8 RGB of the first image of a decoded batch in [-1, 1] (N, 3, H, W)."""
    return ((images[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def add_config_options(ap: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per field of the dataclass ``cls``, typed and defaulted from it."""
    defaults = cls()
    for f in fields(cls):
        if f.name not in skip:
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name))


def config_from_options(cls: type, args: argparse.Namespace, skip: tuple[str, ...] = ()) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name not in skip})
