"""``folder``: any directory of identity subfolders, or flat files (FFHQ-style).

``<root>/<identity>/<...>/<file>`` -> identity = the first-level folder, key =
``<identity>_<rest of the path without extension>``. Files directly in the root get identity =
key = their stem. Every file and link under the root is a row (decoded, or an error row with a
reason) except the obvious non-images of ``base.skip_reason`` and hidden folders, which are
counted in ``Source.skipped``. Symlinks are followed only while they stay inside the root (a link
leading out is the error row ``link_escapes_input``), and each real folder is visited once (so
symlink loops end), under its real path when it has one.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar, Iterator

from .base import Entry, Source, is_image_name, resolve_collisions, sanitize_key, skip_reason

log = logging.getLogger(__name__)


@dataclass
class Walk:
    """What a walk of the input found."""

    files: list[str] = field(default_factory=list)
    """Relative POSIX paths of every listed file (and link), sorted."""
    errors: dict[str, str] = field(default_factory=dict)
    """Location -> reason for listed entries known bad already (``link_escapes_input``)."""
    skipped: Counter = field(default_factory=Counter)
    """Reason -> count of what was left out (see ``base.skip_reason``; ``special_file``,
    ``unreadable_folder``)."""


def _link_problem(path: Path, root: Path) -> str:
    """Why a symlink cannot be followed ("" when it stays inside ``root``)."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return "link_loop"
    return "" if target.is_relative_to(root) else "link_escapes_input"


def walk(root: Path) -> Walk:
    """Every file and link under ``root`` that is not an obvious non-image (see ``skip_reason``).

    Hidden folders are not entered; a link leading outside ``root`` (to a file or a folder) is
    listed with the error ``link_escapes_input`` (``link_loop`` for a link that never resolves),
    never followed; each real folder is visited once, under its real path when it has one.
    """
    root = root.resolve()
    result = Walk()
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
            result.skipped["unreadable_folder"] += 1
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda d: d.name)
        except OSError as exc:
            log.warning("skipping unreadable folder %s: %s", folder, exc)
            result.skipped["unreadable_folder"] += 1
            continue
        for child in children:
            child_rel = f"{rel}/{child.name}" if rel else child.name
            try:
                is_dir = child.is_dir()  # follows symlinks
                is_file = not is_dir and child.is_file()
                is_link = child.is_symlink()
            except OSError:
                is_dir = is_file = False
                is_link = True
            if is_dir and child.name.startswith("."):
                result.skipped["hidden_folder"] += 1
                continue
            reason = "" if is_dir else skip_reason(child.name)
            if reason:
                result.skipped[reason] += 1
                continue
            problem = _link_problem(Path(child.path), root) if is_link else ""
            if problem:
                result.files.append(child_rel)
                result.errors[child_rel] = problem
                continue
            if is_dir:
                (linked if is_link else pending).append((Path(child.path), child_rel))
                continue
            if not is_file and (not is_link or os.path.exists(child.path)):
                result.skipped["special_file"] += 1  # FIFO, socket, device: reading could block
                continue
            result.files.append(child_rel)  # a dangling link inside becomes an unreadable row
    result.files.sort()
    return result


def walk_images(root: Path) -> list[str]:
    """Relative paths of the listed files under ``root`` that are not known bad (see ``walk``)."""
    found = walk(root)
    return [f for f in found.files if f not in found.errors]


def entry_for(location: str, allow_flat: bool = True) -> Entry:
    """The entry of one relative path (an error row for a flat file when those are not allowed)."""
    parts = PurePosixPath(location).parts
    stem = PurePosixPath(parts[-1]).stem
    if len(parts) == 1:
        if not allow_flat:
            return Entry(key=sanitize_key(stem), identity="unknown", location=location,
                         error="not_in_identity_folder")
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
        found = walk(self.root)
        entries = []
        for location in found.files:
            entry = entry_for(location, self.allow_flat)
            if location in found.errors:
                entry.error = found.errors[location]
            entries.append(entry)
        self.skipped = dict(found.skipped)
        log_listing(self.root, len(entries), found.skipped)
        yield from resolve_collisions(entries)


def log_listing(root: Path, listed: int, skipped: Counter) -> None:
    """One log line: how many files became rows and what was left out, by reason."""
    left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "nothing"
    log.info("%s: %d files listed; left out: %s", root, listed, left_out)
