"""``folder``: any directory of identity subfolders, or flat files (FFHQ-style).

``<root>/<identity>/<...>/<file>`` -> identity = the first-level folder, key =
``<identity>_<rest of the path without extension>``. Files directly in the root get identity =
key = their stem. Hidden files and folders are skipped, symlinks are followed only while they
stay inside the root, and each real folder is visited once (so symlink loops end), under its
real path when it has one.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import ClassVar, Iterator

from .base import Entry, Source, is_image_name, resolve_collisions, sanitize_key

log = logging.getLogger(__name__)


def walk_images(root: Path) -> list[str]:
    """Relative POSIX paths of every visible image file under ``root``, sorted."""
    root = root.resolve()
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    # Real folders first, so files are listed under their real path rather than an alias.
    pending: list[tuple[Path, str]] = [(root, "")]
    linked: list[tuple[Path, str]] = []
    while pending or linked:
        folder, rel = pending.pop() if pending else linked.pop()
        try:
            real = folder.resolve()
            stat = real.stat()
        except OSError as exc:
            log.warning("skipping unreadable folder %s: %s", folder, exc)
            continue
        if not real.is_relative_to(root):
            log.warning("skipping %s: it leads outside the input folder", folder)
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda d: d.name)
        except OSError as exc:
            log.warning("skipping unreadable folder %s: %s", folder, exc)
            continue
        for child in children:
            if child.name.startswith("."):
                continue
            child_rel = f"{rel}/{child.name}" if rel else child.name
            try:
                is_dir = child.is_dir()  # follows symlinks
                is_file = not is_dir and child.is_file()
            except OSError:
                continue
            if is_dir:
                (linked if child.is_symlink() else pending).append((Path(child.path), child_rel))
            elif is_file and is_image_name(child.name):
                if child.is_symlink() and not Path(child.path).resolve().is_relative_to(root):
                    log.warning("skipping %s: it links outside the input folder", child.path)
                    continue
                found.append(child_rel)
    found.sort()
    return found


def entry_for(location: str, allow_flat: bool = True) -> Entry | None:
    """The entry of one relative image path (None for a flat file when those are not allowed)."""
    parts = PurePosixPath(location).parts
    stem = PurePosixPath(parts[-1]).stem
    if len(parts) == 1:
        if not allow_flat:
            return None
        return Entry(key=sanitize_key(stem), identity=stem, location=location)
    identity = parts[0]
    key = sanitize_key(identity, *parts[1:-1], stem)
    return Entry(key=key, identity=identity, location=location)


class FolderSource(Source):
    """Identity subfolders of images, or flat images whose stem is the identity."""

    name: ClassVar[str] = "folder"
    allow_flat: ClassVar[bool] = True

    def __init__(self, input: Path | str | None) -> None:
        super().__init__(input)
        self._check_layout()

    def _check_layout(self) -> None:
        with os.scandir(self.root) as it:
            visible = [d for d in it if not d.name.startswith(".")]
        if not any(d.is_dir() or (self.allow_flat and is_image_name(d.name)) for d in visible):
            what = "identity folders or image files" if self.allow_flat else "identity folders"
            raise ValueError(f"no {what} in {self.root}")

    def list(self) -> Iterator[Entry]:
        entries = []
        for location in walk_images(self.root):
            entry = entry_for(location, self.allow_flat)
            if entry is None:
                log.warning("skipping %s: not inside an identity folder", location)
            else:
                entries.append(entry)
        yield from resolve_collisions(entries)
