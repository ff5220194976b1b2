"""Import mediapipe's face mesh without the plotting library its package imports.

``import mediapipe`` (which any mediapipe submodule runs first) imports its drawing helpers, and
they import ``matplotlib.pyplot`` at module level: ~0.6-0.9 s of a ~1.4 s import, on the path to
every worker's first sample, for a function (``plot_landmarks``) we never call. pyplot is put in
``sys.modules`` as a stand-in that imports the real module on its first attribute access, so
anything that does plot later still gets real matplotlib.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

PYPLOT = "matplotlib.pyplot"


class _DeferredModule(types.ModuleType):
    """Imports the module of its name on the first attribute it lacks, then forwards to it."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # import-system probes (__path__, __file__, ...): not a use
            raise AttributeError(attr)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def face_mesh() -> types.ModuleType:
    """``mediapipe.python.solutions.face_mesh``, imported with pyplot deferred (when not loaded yet)."""
    deferred = None
    if PYPLOT not in sys.modules:
        deferred = sys.modules[PYPLOT] = _DeferredModule(PYPLOT)
    from mediapipe.python.solutions import face_mesh as module

    package = sys.modules.get("matplotlib")
    if deferred is not None and package is not None and sys.modules.get(PYPLOT) is deferred:
        package.pyplot = deferred  # `import matplotlib.pyplot; matplotlib.pyplot.plot(...)` still works
    return module
