"""Checks of the output folder before any work, each failing with one line (nothing is created).

Ordinary mistakes — ``--out`` naming a file, a folder without write permission, a path in a
kernel filesystem such as ``/sys`` — are reported before the run creates or locks anything, so
a refused run leaves the disk as it was.
"""
from __future__ import annotations

import os
from pathlib import Path

VIRTUAL_ROOTS = (Path("/sys"), Path("/proc"), Path("/dev"))
"""Kernel filesystems: writable-looking for root, never a place for a dataset."""


class OutputFolderError(ValueError):
    """The output folder cannot be used; the message says why in one line."""


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_folder(out: str | Path, flag: str = "--out") -> Path:
    """Raise OutputFolderError unless ``out`` is (or can become) a writable folder; returns it absolute."""
    path = Path(out).expanduser().absolute()
    resolved = path.resolve()
    for root in VIRTUAL_ROOTS:
        if resolved == root or root in resolved.parents:
            raise OutputFolderError(f"{flag} {out} is under {root}, a kernel filesystem, not storage: "
                                    f"choose a folder on a disk")
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{flag} {out} is a file, not a folder: give a new folder or an earlier output")
    base = _first_existing(path)
    if not base.is_dir():
        raise OutputFolderError(f"{flag} {out} cannot be created: {base} is a file, not a folder")
    if _read_only(base):
        raise OutputFolderError(f"{flag} {out}: {base} is on a read-only filesystem")
    if not os.access(base, os.W_OK | os.X_OK):
        where = "in the folder" if base == path else "to create it in"
        raise OutputFolderError(f"{flag} {out}: no write permission {where} {base}")
    return path
