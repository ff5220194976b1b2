"""The weights registry: model name -> where its file comes from, its sha256, and who builds it.

Weights live in a weights directory (``--weights-dir``, else ``$FACEWEAVE_WEIGHTS``, else the
user cache ``~/.cache/faceweave/weights``) or, for the lite preset, inside this package; a
bundled entry is taken from the weights directory when a copy with its pinned sha256 is there
(a copy that does not match is not used, with a warning). A file
is opened only after its sha256 matches, and only with ``torch.load(weights_only=True)``.
A run never writes into the weights directory; only ``pipeline weights fetch`` does.

An entry whose sha256 is not pinned (``""``) is refused by ``resolve`` unless the caller passes
``allow_unverified=True`` or sets ``$FACEWEAVE_ALLOW_UNVERIFIED=1``: pinning is the default, and
loading an unpinned file is an explicit, visible choice. Family modules register their entries
on import; ``import stages.models`` registers them all.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ENV_VAR = "FACEWEAVE_WEIGHTS"
UNVERIFIED_ENV_VAR = "FACEWEAVE_ALLOW_UNVERIFIED"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


class MissingWeights(FileNotFoundError):
    """A weights file is absent: names the file, where to put it and where to get it."""

    def __init__(self, spec: "WeightsSpec", path: Path):
        self.spec, self.path = spec, path
        urls = ", ".join(spec.urls) or "(no public URL)"
        super().__init__(
            f"missing weights for '{spec.name}': {path} not found. "
            f"Run `pipeline weights fetch {spec.name}` where internet exists, or download "
            f"{urls} by hand and save it as {path} (sha256 {spec.sha256 or 'not pinned'})."
        )


class BadChecksum(ValueError):
    """A weights file whose sha256 differs from the registry: refused before it is opened."""


class UnverifiedWeights(ValueError):
    """A weights entry with no pinned sha256: refused unless the caller allows unverified files."""


@dataclass(frozen=True)
class WeightsSpec:
    """One registered weights file."""

    name: str
    """Registry name, used in stage configs (e.g. ``retinaface_mobile0.25``)."""
    family: str
    """Model family: the ``load_<family>`` function that builds the architecture."""
    filename: str
    """File name inside the weights directory (or the bundled directory)."""
    sha256: str
    size: int = 0
    """Bytes, 0 when unknown."""
    urls: tuple[str, ...] = ()
    license: str = ""
    input: str = ""
    """Input spec in words (size, colour order, normalisation)."""
    bundled: bool = False
    """Shipped inside the package (lite preset) instead of the weights directory."""
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


REGISTRY: dict[str, WeightsSpec] = {}


def register(spec: WeightsSpec) -> WeightsSpec:
    if spec.name in REGISTRY and REGISTRY[spec.name] != spec:
        raise ValueError(f"weights name registered twice: {spec.name}")
    REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> WeightsSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown weights '{name}'; known: {', '.join(sorted(REGISTRY))}") from None


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The weights directory: explicit argument, else $FACEWEAVE_WEIGHTS, else the user cache."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "faceweave" / "weights"


def path_of(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the file of ``name`` is expected (it may not exist).

    A bundled entry uses a copy in the weights directory when one is there and matches the
    pinned sha256, else the bundled file, with a warning saying why the copy was not used.
    """
    spec = get(name)
    if spec.bundled:
        return _bundled_path(spec, root)
    return weights_dir(root) / spec.filename


def _bundled_path(spec: WeightsSpec, root: str | os.PathLike | None) -> Path:
    bundled = BUNDLED_DIR / spec.filename
    copy = weights_dir(root) / spec.filename
    if not copy.is_file() or copy.resolve() == bundled.resolve():
        return bundled
    if not spec.sha256:
        why = "the entry has no pinned sha256 to check it against"
    else:
        actual = sha256_of(copy)
        if actual == spec.sha256:
            return copy
        why = f"its sha256 {actual} is not the pinned {spec.sha256}"
    warnings.warn(f"not using {copy} for '{spec.name}': {why}; using the bundled {bundled}", stacklevel=3)
    return bundled


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def allow_unverified_default() -> bool:
    """True when $FACEWEAVE_ALLOW_UNVERIFIED is set to 1/true/yes."""
    return os.environ.get(UNVERIFIED_ENV_VAR, "").strip().lower() in ("1", "true", "yes")


def _refuse_unpinned(spec: WeightsSpec, path: Path, allow_unverified: bool | None) -> None:
    if spec.sha256 or allow_unverified or (allow_unverified is None and allow_unverified_default()):
        return
    raise UnverifiedWeights(
        f"weights '{spec.name}' ({path}) have no pinned sha256 in the registry, so the file cannot "
        f"be verified. Pin its sha256 (`pipeline weights verify` prints it), or pass "
        f"allow_unverified=True / set {UNVERIFIED_ENV_VAR}=1 to load it unverified."
    )


def resolve(name: str, root: str | os.PathLike | None = None, check: bool = True,
            allow_unverified: bool | None = None) -> Path:
    """The verified path of ``name``'s file; raises MissingWeights / BadChecksum.

    An entry without a pinned sha256 raises UnverifiedWeights unless ``allow_unverified``
    (default: $FACEWEAVE_ALLOW_UNVERIFIED) is true: an unpinned file could be anything.
    """
    spec = get(name)
    path = path_of(name, root)
    if not path.is_file():
        raise MissingWeights(spec, path)
    if check:
        _refuse_unpinned(spec, path, allow_unverified)
        if spec.sha256:
            actual = sha256_of(path)
            if actual != spec.sha256:
                raise BadChecksum(
                    f"{path}: sha256 {actual} does not match {spec.sha256} for '{name}'"
                )
    return path


def load_state_dict(name: str, root: str | os.PathLike | None = None,
                    allow_unverified: bool | None = None) -> dict:
    """Verify, then load a plain tensor state dict with ``weights_only=True`` on the CPU."""
    import torch

    path = resolve(name, root, allow_unverified=allow_unverified)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _download(url: str, tmp: Path, timeout: float, chunk: int = 1 << 20) -> tuple[str, int]:
    """Stream ``url`` into ``tmp``; returns (sha256, bytes)."""
    h, n = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while block := response.read(chunk):
                h.update(block)
                out.write(block)
                n += len(block)
    except BaseException:  # interrupted or failed: leave no partial file behind
        tmp.unlink(missing_ok=True)
        raise
    return h.hexdigest(), n


def fetch(names: Iterable[str] | None = None, root: str | os.PathLike | None = None,
          allow_unverified: bool = False, timeout: float = 60.0) -> list[Path]:
    """Download the files of ``names`` (default: every non-bundled entry) into the weights dir.

    Each file is written under a temporary name, its sha256 checked, then renamed into place,
    so an interrupted or corrupted download never leaves a file that looks valid. Files already
    present with the right sha256 are kept. Entries without a pinned sha256 are refused unless
    ``allow_unverified``. Returns the final paths.
    """
    selected = list(names) if names is not None else [n for n, s in REGISTRY.items() if not s.bundled]
    directory = weights_dir(root)
    paths = []
    for name in selected:
        spec = get(name)
        dest = path_of(name, root)
        if spec.bundled:
            paths.append(resolve(name, root, allow_unverified=allow_unverified))
            continue
        if dest.is_file() and spec.sha256 and sha256_of(dest) == spec.sha256:
            paths.append(dest)
            continue
        if not spec.urls:
            raise MissingWeights(spec, dest)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{spec.filename}.part-{os.getpid()}"
        errors = []
        for url in spec.urls:
            try:
                digest, size = _download(url, tmp, timeout)
            except OSError as exc:
                errors.append(f"{url}: {exc}")
                continue
            problem = ""
            if spec.size and size != spec.size:
                problem = f"{size} bytes, expected {spec.size}"
            elif spec.sha256 and digest != spec.sha256:
                problem = f"sha256 {digest}, expected {spec.sha256}"
            elif not spec.sha256 and not allow_unverified:
                problem = f"no pinned sha256 to check against (got {digest}); allow_unverified to keep it"
            if problem:
                tmp.unlink(missing_ok=True)
                errors.append(f"{url}: {problem}")
                continue
            os.replace(tmp, dest)
            paths.append(dest)
            break
        else:
            tmp.unlink(missing_ok=True)
            raise BadChecksum(f"could not fetch '{name}': " + "; ".join(errors))
    return paths


def verify(root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(name, status) for every registered entry: ok, missing, bad_checksum or unpinned:<sha>."""
    report = []
    for name in sorted(REGISTRY):
        spec, path = REGISTRY[name], path_of(name, root)
        if not path.is_file():
            status = "missing"
        elif not spec.sha256:
            status = f"unpinned:{sha256_of(path)}"
        else:
            status = "ok" if sha256_of(path) == spec.sha256 else "bad_checksum"
        report.append((name, status))
    return report
