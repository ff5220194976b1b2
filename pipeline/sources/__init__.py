"""Input sources: the registry of dataset readers, by name.

``get_source(name)`` gives the class; ``open_source(name, input)`` an instance. Every source
lists ``Entry`` rows and reads raw bytes (see ``base.py``).
"""
from __future__ import annotations

from pathlib import Path

from .base import IMAGE_EXTS, Entry, Source, sanitize_key
from .casia import CasiaSource
from .celeba import CelebASource
from .celebahq import CelebAHQSource
from .ffhq import FFHQSource
from .folder import FolderSource
from .sample import SampleSource

SOURCES: dict[str, type[Source]] = {
    cls.name: cls
    for cls in (CasiaSource, CelebASource, CelebAHQSource, FFHQSource, FolderSource, SampleSource)
}


def get_source(name: str) -> type[Source]:
    """The source class registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}") from None


def open_source(name: str, input: Path | str | None = None) -> Source:
    """An instance of the source ``name`` reading ``input``."""
    return get_source(name)(input)


__all__ = [
    "IMAGE_EXTS",
    "SOURCES",
    "CasiaSource",
    "CelebAHQSource",
    "CelebASource",
    "Entry",
    "FFHQSource",
    "FolderSource",
    "SampleSource",
    "Source",
    "get_source",
    "open_source",
    "sanitize_key",
]
