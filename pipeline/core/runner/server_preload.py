"""Imported only by the process executor's fork server (``forkserver.PRELOAD``); never anywhere else.

It imports torch, mediapipe (without pyplot and sounddevice: ``stages/mediapipe_import.py``), the
model code and the stage modules once, so every worker forked from the server starts with them. Also what
the CLI module imports: multiprocessing re-runs the driver's main module (``pipeline.cli``) in
each new worker, ~0.2 s each with typer not yet imported. And it answers pyarrow's pandas probe
once (``forkserver.skip_pandas_probe``).
Not torchvision or facexlib: the lite preset's nets need neither (RetinaFace and the ResNet trunk
are our own), and ``torchvision.models`` alone costs ~2 s (it pulls in ``torch._dynamo``); the
stages built on facexlib (parsing, arcface) import it at their set-up. A
module that fails to import (missing, or broken) is skipped here, so the server always starts;
the worker that needs it then fails at its stage's set-up, with an error that reaches the driver.

The server also ends without tearing those modules down one by one (about a second after the
driver is gone, while it still holds the driver's stdout and stderr open), as the driver itself
does (``pipeline.cli._exit_now``).
"""
from __future__ import annotations

import atexit
import importlib
import os

import stages
from pipeline.core.forkserver import skip_pandas_probe

MODULES = ("torch", "stages.models", "pipeline.core.group", "pipeline.core.pack", "h5py", "typer",
           "pipeline.weights_cli")
"""h5py: the emotion model's Keras weights file; typer and weights_cli: what ``pipeline.cli`` imports
(not the CLI module itself, which the worker runs as its ``__mp_main__``)."""

for _name in (*MODULES, *stages.MODULES.values()):
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001 - see the module docstring
        pass
try:
    from stages import mediapipe_import

    mediapipe_import.face_mesh()
except Exception:  # noqa: BLE001 - see the module docstring
    pass
skip_pandas_probe()

atexit.register(os._exit, 0)
