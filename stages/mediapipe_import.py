"""Import mediapipe's face mesh without the plotting and audio libraries its package imports.

``import mediapipe`` (which any mediapipe submodule runs first) imports its drawing helpers, which
import ``matplotlib.pyplot`` at module level (~0.6-0.9 s of a ~1.4 s import, on the path to every
worker's first sample, for a ``plot_landmarks`` we never call), and its audio tasks, which import
``sounddevice`` (it looks for PortAudio by running ldconfig, gcc and ld: ~0.2 s, nine processes).
Both are put in ``sys.modules`` as stand-ins that import the real module on their first attribute
access, so anything that does plot or record later still gets the real one.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

PYPLOT = "matplotlib.pyplot"
DEFERRED = (PYPLOT, "sounddevice")


class _DeferredModule(types.ModuleType):
    """Imports the module of its name on the first attribute it lacks, then forwards to it."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # import-system probes (__path__, __file__, ...): not a use
            raise AttributeError(attr)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def face_mesh() -> types.ModuleType:
    """``mediapipe.python.solutions.face_mesh``, imported with ``DEFERRED`` deferred (those not loaded yet)."""
    deferred = {name: _DeferredModule(name) for name in DEFERRED if name not in sys.modules}
    sys.modules.update(deferred)
    from mediapipe.python.solutions import face_mesh as module

    package = sys.modules.get("matplotlib")
    if PYPLOT in deferred and package is not None and sys.modules.get(PYPLOT) is deferred[PYPLOT]:
        package.pyplot = deferred[PYPLOT]  # `import matplotlib.pyplot; matplotlib.pyplot.plot(...)` works
    return module
