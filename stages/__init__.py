"""The stage registry: short stage names in run order, each a module holding one Stage class.

Modules are imported lazily so a run that needs only mediapipe never imports torch models.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

from stages.base import Stage

# Run order: a frame producer (detect, restore) comes before the stages that see its frame.
ORDER: list[str] = [
    "detect",
    "restore",
    "landmarks",
    "pose",
    "parsing",
    "identity",
    "expression",
    "attributes",
    "quality",
    "caption",
    "detail_caption",
    "consistency",
]

MODULES: dict[str, str] = {name: f"stages.{name}" for name in ORDER}
PLUGINS_ENV = "FACEWEAVE_PLUGINS"


def register(name: str, module: str, before: str | None = None) -> None:
    """Add a stage from another module (plugins, tests); it runs before ``before`` or last."""
    MODULES[name] = module
    if name not in ORDER:
        ORDER.insert(ORDER.index(before) if before else len(ORDER), name)


def load_plugins(spec: str | None = None) -> None:
    """Import the modules named in $FACEWEAVE_PLUGINS (comma-separated) and call their register().

    Every process that imports ``stages`` (the driver, Ray workers) sees the same plugin stages.
    """
    for module in filter(None, (spec if spec is not None else os.environ.get(PLUGINS_ENV, "")).split(",")):
        importlib.import_module(module.strip()).register()


def available() -> list[str]:
    """Stage names whose module exists in this install."""
    return [name for name in ORDER if importlib.util.find_spec(MODULES[name]) is not None]


def stage_class(name: str) -> type[Stage]:
    """The Stage subclass registered under ``name``."""
    if name not in MODULES:
        raise KeyError(f"unknown stage '{name}'; known: {', '.join(available())}")
    module = importlib.import_module(MODULES[name])
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Stage) and obj is not Stage and obj.name == name:
            return obj
    raise KeyError(f"module {MODULES[name]} defines no Stage named '{name}'")


load_plugins()
