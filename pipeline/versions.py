"""Installed versions of faceweave and the dependencies that decide whether it works.

Read from package metadata, not by importing: ``pipeline --version`` answers in a broken
environment too (that is when it is needed).
"""
from __future__ import annotations

import platform
from importlib import metadata

PACKAGE = "faceweave"
KEY_DEPENDENCIES = ("numpy", "torch", "torchvision", "mediapipe", "pyarrow", "pandas", "ray",
                    "webdataset", "opencv-python", "duckdb", "transformers", "diffusers")


def version_of(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """{name: version} of faceweave, python and each key dependency ("not installed" where absent)."""
    found = {PACKAGE: version_of(PACKAGE) or "unknown (not installed as a package)",
             "python": platform.python_version()}
    for dist in KEY_DEPENDENCIES:
        found[dist] = version_of(dist) or "not installed"
    return found


def describe() -> str:
    """``faceweave X`` on the first line, then one ``name version`` line per dependency."""
    items = versions()
    head = f"{PACKAGE} {items.pop(PACKAGE)}"
    width = max(len(k) for k in items)
    return "\n".join([head, *(f"  {k:<{width}}  {v}" for k, v in items.items())])
