"""The source contract (``Entry``, ``Source``) and helpers shared by every source.

A source lists the samples of one input dataset and reads the raw bytes of one of them. Keys
are stable, dot-free and unique: ``<identity>_<stem>`` sanitised to ``[A-Za-z0-9_-]``. When two
samples map to the same key (compared case-insensitively, since shards may be unpacked on a
case-insensitive file system) the first in location order (record order for RecordIO) keeps it
and each later one gets a hash-suffixed key and ``error = "key_collision: <first location>"``.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                        ".avif"})
"""Extensions of formats the pipeline decodes (AVIF where Pillow has it; else an error row)."""
OTHER_IMAGE_EXTS = frozenset({".heic", ".heif", ".jxl", ".jp2", ".j2k", ".psd", ".svg", ".ico", ".tga",
                              ".ppm", ".pgm", ".pbm", ".dng", ".cr2", ".nef", ".arw"})
"""Image formats that are listed but not decoded: each becomes an error row with a reason."""
NON_IMAGE_EXTS = frozenset({
    ".txt", ".md", ".rst", ".json", ".jsonl", ".csv", ".tsv", ".yaml", ".yml", ".xml", ".html", ".htm",
    ".ini", ".cfg", ".toml", ".log", ".pdf", ".py", ".sh", ".ipynb",
    ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar",
    ".mat", ".npy", ".npz", ".pkl", ".pickle", ".parquet", ".h5", ".hdf5", ".lmdb", ".mdb", ".db", ".sqlite",
    ".rec", ".idx", ".lst", ".pth", ".pt", ".onnx", ".bin",
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".mp3", ".wav",
})
"""Obvious non-images (text, metadata, archives, arrays, weights, video): skipped and counted."""
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", ".directory"})
MAX_KEY_LEN = 120
_HASH_LEN = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class Entry:
    """One sample as listed by a source."""

    key: str
    """Stable, dot-free, unique sample key, e.g. ``0000045_001``."""
    identity: str
    """Identity label, e.g. ``0000045``."""
    location: str
    """Path relative to the input root, or ``<file>.rec#<offset>`` for RecordIO."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra JSON-serialisable per-sample metadata (e.g. CelebA attributes)."""
    error: str = ""
    """Non-empty when listing already knows the entry is bad (e.g. ``key_collision: ...``)."""


def _digest(text: str, length: int = _HASH_LEN) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def _with_suffix(key: str, suffix: str) -> str:
    """``key_suffix``, shortening ``key`` so the result fits in MAX_KEY_LEN."""
    return f"{key[: MAX_KEY_LEN - len(suffix) - 1]}_{suffix}"


def sanitize_key(*parts: str) -> str:
    """Join ``parts`` with ``_`` into a key of ``[A-Za-z0-9_-]``, never empty, no leading ``-``.

    Over-long keys are cut and end in a short hash of the unsanitised parts, so they stay unique.
    """
    raw = "_".join(parts)
    key = _UNSAFE.sub("_", raw) or "_"
    if key.startswith("-"):
        key = "_" + key[1:]
    if len(key) > MAX_KEY_LEN:
        key = _with_suffix(key, _digest(raw))
    return key


def resolve_collisions(
    entries: Iterable[Entry], order: Callable[[Entry], Any] | None = None
) -> list[Entry]:
    """Sort (by location unless ``order`` is given) and make keys unique.

    Every later duplicate of a key gets a hash-suffixed key and a ``key_collision`` error.
    """
    ordered = sorted(entries, key=order or (lambda e: e.location))
    taken = {e.key.lower() for e in ordered}
    owner: dict[str, str] = {}
    for entry in ordered:
        folded = entry.key.lower()
        if folded not in owner:
            owner[folded] = entry.location
            continue
        first = owner[folded]
        length = _HASH_LEN
        new_key = _with_suffix(entry.key, _digest(entry.location, length))
        while new_key.lower() in taken:  # a real key already looks like our suffixed one
            length += 4
            new_key = _with_suffix(entry.key, _digest(entry.location, length))
        taken.add(new_key.lower())
        owner[new_key.lower()] = entry.location
        entry.key = new_key
        reason = f"key_collision: {first}"
        entry.error = f"{entry.error}; {reason}" if entry.error else reason
    return ordered


def check_input_dir(input: Path | str | None, source: str) -> Path:
    """The input folder as an absolute path; a one-line error when it is unusable."""
    if input is None:
        raise ValueError(f"source {source!r} needs an input folder")
    path = Path(input).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input folder not found: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"input is not a folder: {path}")
    return path.resolve()


def safe_join(root: Path, location: str) -> Path:
    """``root / location`` resolved, refusing locations that escape ``root``."""
    if not location or Path(location).is_absolute():
        raise ValueError(f"location must be a relative path: {location!r}")
    path = (root / location).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"location escapes the input folder: {location!r}")
    return path


def is_image_name(name: str) -> bool:
    """A visible file name with an image extension (case-insensitive)."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTS


def skip_reason(name: str) -> str:
    """Why a file is not listed ("" when it is: it becomes a row, decoded or with a reason).

    ``hidden``: system files (.DS_Store, Thumbs.db), AppleDouble ``._*`` companions and names
    starting with a dot that do not end in an image extension (editor and download temp files,
    ``.gitignore``); a dot name with an image extension (``..dots..jpg``) is listed.
    ``non_image``: an extension in NON_IMAGE_EXTS. Everything else is listed.
    """
    suffix = Path(name).suffix.lower()
    if name.lower() in SYSTEM_FILES or name.startswith("._"):
        return "hidden"
    if name.startswith("."):
        return "" if suffix in IMAGE_EXTS | OTHER_IMAGE_EXTS else "hidden"
    return "non_image" if suffix in NON_IMAGE_EXTS else ""


class Source:
    """Base class: lists a dataset's samples and reads their raw bytes."""

    name: ClassVar[str] = ""

    def __init__(self, input: Path | str | None) -> None:
        self.root = check_input_dir(input, self.name)
        self.skipped: dict[str, int] = {}
        """What the last ``list()`` left out on purpose, by reason (e.g. ``non_image``)."""

    def list(self) -> Iterator[Entry]:
        """Every sample, deterministically ordered (the runner sorts by key anyway)."""
        raise NotImplementedError

    def read(self, location: str) -> bytes:
        """The raw bytes of one sample; raises OSError/ValueError when it cannot be read."""
        return safe_join(self.root, location).read_bytes()

    def stat(self, location: str) -> tuple[int | None, int | None]:
        """(size, mtime_ns) of the file behind ``location`` now; (None, None) if it is not there.

        Compared with the plan on every run to notice changed inputs without reading them.
        """
        try:
            st = safe_join(self.root, location).stat()
        except (OSError, ValueError, RuntimeError):  # RuntimeError: a symlink loop
            return None, None
        return st.st_size, st.st_mtime_ns

    files: ClassVar[tuple[str, ...]] = ()
    """Suffixes of per-sample files the source carries along (e.g. a ground-truth label map)."""

    def extra_files(self, location: str, meta: dict[str, Any]) -> dict[str, bytes]:
        """Per-sample files to carry into the shard (suffix -> bytes); none by default."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What to record about this source in a run's metadata."""
        return {"source": self.name, "input": str(self.root)}
