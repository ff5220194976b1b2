"""Shared fixtures: real faces from ../shared/faces copied into CASIA-like trees."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
FACES = SHARED / "faces"
LFW = FACES / "lfw10"


def lfw_people(n_people: int, n_photos: int) -> list[tuple[str, list[Path]]]:
    if not LFW.is_dir():
        pytest.skip(f"real faces missing: {LFW}")
    people = sorted(p for p in LFW.iterdir() if p.is_dir())[:n_people]
    return [(p.name, sorted(p.glob("*.jpg"))[:n_photos]) for p in people]


def make_casia_tree(root: Path, n_people: int = 3, n_photos: int = 3) -> Path:
    """CASIA-WebFace-like folders: <7-digit identity>/<3-digit>.jpg, copied from lfw10."""
    for i, (_, photos) in enumerate(lfw_people(n_people, n_photos)):
        folder = root / f"{i + 1:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j, photo in enumerate(photos):
            shutil.copyfile(photo, folder / f"{j + 1:03d}.jpg")
    return root


@pytest.fixture(scope="session")
def casia_tree(tmp_path_factory) -> Path:
    """3 identities x 3 real photos, plus an identity folder of odd and broken files."""
    from tests.fixtures.odd import write_odd_files

    root = make_casia_tree(tmp_path_factory.mktemp("casia") / "CASIA-WebFace")
    write_odd_files(root / "0009999")
    return root
