"""Sources ffhq and celeba-hq: layouts, JSON metadata, identity join, ground-truth merge, shards."""
from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.sources import SOURCES, open_source
from pipeline.sources.celebahq import merge_parts
from schemas import gt
from schemas.parsing import CLASSES
from tests.conftest import lfw_photos, put


@pytest.fixture
def photos() -> list[Path]:
    """Four real face photos (250x250)."""
    return lfw_photos(("Colin_Powell", "Tony_Blair"))


def test_registered() -> None:
    assert {"ffhq", "celeba-hq"} <= set(SOURCES)


def test_part_names_are_parsing_classes() -> None:
    assert all(CLASSES[i] == name for name, i in gt.PART_CLASS.items())
    assert set(gt.PART_CLASS) == set(CLASSES[1:])
    assert gt.PAINT_ORDER[0] == "skin" and gt.PAINT_ORDER[-2:] == ("hair", "hat")


# --- ffhq -----------------------------------------------------------------------------------

FFHQ_JSON = {
    "0": {"category": "training",
          "metadata": {"photo_url": "https://example.org/p/0", "author": "a", "license": "CC BY 2.0"},
          "image": {"file_path": "images1024x1024/00000/00000.png", "pixel_size": [1024, 1024],
                    "face_landmarks": [[1.0, 2.0]] * 68},
          "thumbnail": {"file_path": "thumbnails128x128/00000/00000.png"},
          "in_the_wild": {"face_landmarks": [[1.0, 2.0]] * 68, "face_rect": [1, 2, 3, 4]}},
    "1001": {"category": "validation", "metadata": {"author": "b"},
             "image": {"file_path": "images1024x1024/01000/01001.png"}},
}


def test_ffhq_nested_with_metadata(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "images1024x1024/00000/00000.png", photos[0])
    put(tmp_path, "images1024x1024/01000/01001.png", photos[1])
    put(tmp_path, "images1024x1024/01000/01002.png", photos[2])
    put(tmp_path, "images1024x1024/LICENSE.txt", photos[3])
    put(tmp_path, "thumbnails128x128/00000/00000.png", photos[3])  # another variant: ignored
    (tmp_path / "ffhq-dataset-v2.json").write_text(json.dumps(FFHQ_JSON))
    source = open_source("ffhq", tmp_path)
    entries = list(source.list())
    assert [(e.key, e.identity, e.location, e.error) for e in entries] == [
        ("ffhq_00000", "ffhq_00000", "images1024x1024/00000/00000.png", ""),
        ("ffhq_01001", "ffhq_01001", "images1024x1024/01000/01001.png", ""),
        ("ffhq_01002", "ffhq_01002", "images1024x1024/01000/01002.png", ""),
    ]
    assert entries[0].meta == {"ffhq": {"category": "training", "metadata": FFHQ_JSON["0"]["metadata"]}}
    assert entries[1].meta == {"ffhq": {"category": "validation", "metadata": {"author": "b"}}}
    assert entries[2].meta == {}
    assert "landmarks" not in json.dumps([e.meta for e in entries])
    assert source.read(entries[1].location) == photos[1].read_bytes()
    assert source.describe()["metadata"] is True


def test_ffhq_images_folder_as_input(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "images1024x1024/00000/00000.png", photos[0])
    (tmp_path / "ffhq-dataset-v2.json").write_text(json.dumps(FFHQ_JSON))  # found in the parent
    (entry,) = open_source("ffhq", tmp_path / "images1024x1024").list()
    assert (entry.key, entry.location) == ("ffhq_00000", "00000/00000.png")
    assert entry.meta["ffhq"]["category"] == "training"


def test_ffhq_flat_and_odd_names(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "00007.png", photos[0])
    put(tmp_path, "7.jpg", photos[1])  # the same image number: a collision, not an overwrite
    put(tmp_path, "extra photo.jpg", photos[2])
    (tmp_path / "broken.json").write_text("{not json")
    entries = {e.location: e for e in open_source("ffhq", tmp_path).list()}
    assert entries["00007.png"].key == "ffhq_00007" and entries["00007.png"].error == ""
    assert entries["7.jpg"].error == "key_collision: 00007.png"
    assert entries["extra photo.jpg"].key == "ffhq_extra_photo"


def test_ffhq_unreadable_metadata_is_ignored(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "00001.png", photos[0])
    (tmp_path / "ffhq-dataset-v2.json").write_text("[1, 2")
    (entry,) = open_source("ffhq", tmp_path).list()
    assert entry.meta == {}


@pytest.mark.parametrize("name", ["ffhq", "celeba-hq"])
def test_missing_or_bad_input(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError):
        open_source(name, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as err:
        open_source(name, tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "\n" not in str(err.value)


# --- celeba-hq ------------------------------------------------------------------------------

MAPPING = "idx orig_idx orig_file\n0 1 000002.jpg\n1 2 000003.jpg\n2 5 000006.jpg\n"
ATTRS = "3\nMale Smiling Young\n000002.jpg 1 -1 1\n000003.jpg -1 1 1\n"


def square(size: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def write_parts(root: Path, index: int, parts: dict[str, np.ndarray]) -> None:
    folder = root / "CelebAMask-HQ-mask-anno" / str(index // 2000)
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in parts.items():
        cv2.imwrite(str(folder / f"{index:05d}_{name}.png"), mask)


def hq_tree(root: Path, photos: list[Path], anno: str = "") -> Path:
    for i, photo in enumerate(photos[:3]):
        put(root, f"CelebA-HQ-img/{i}.jpg", photo)
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(MAPPING)
    (root / anno).mkdir(parents=True, exist_ok=True)
    (root / anno / "identity_CelebA.txt").write_text("000002.jpg 2880\n000003.jpg 2880\n000004.jpg 9\n")
    (root / anno / "list_attr_celeba.txt").write_text(ATTRS)
    return root


# 125x125 parts for 250x250 photos: the same 1:2 ratio as CelebAMask-HQ's 512 masks and 1024 images
PARTS = {
    "skin": square(125, 20, 20, 100, 110),
    "nose": square(125, 55, 50, 70, 75),  # inside the skin
    "l_eye": square(125, 30, 40, 50, 50),
    "eye_g": square(125, 25, 35, 55, 55),  # glasses cover the eye
    "hair": square(125, 10, 5, 110, 30),  # over the top of the skin
    "neck": square(125, 40, 100, 85, 125),  # under the skin's bottom rows
    "cloth": square(125, 0, 115, 125, 125),  # over the neck
}


@pytest.mark.parametrize("anno", ["", "Anno"])
def test_celebahq_identity_join_and_attributes(tmp_path: Path, photos: list[Path], anno: str) -> None:
    source = open_source("celeba-hq", hq_tree(tmp_path, photos, anno))
    entries = list(source.list())
    assert [(e.key, e.identity, e.location, e.error) for e in entries] == [
        ("02880_hq00000", "02880", "CelebA-HQ-img/0.jpg", ""),
        ("02880_hq00001", "02880", "CelebA-HQ-img/1.jpg", ""),
        ("hq00002", "hq00002", "CelebA-HQ-img/2.jpg", ""),  # 000006.jpg has no identity row
    ]
    assert entries[0].meta == {"celebahq_index": 0, "celeba_file": "000002.jpg",
                               "celeba_attributes": {"Male": True, "Smiling": False, "Young": True}}
    assert entries[1].meta["celeba_attributes"]["Smiling"] is True
    assert entries[2].meta == {"celebahq_index": 2, "celeba_file": "000006.jpg"}
    assert source.read(entries[1].location) == photos[1].read_bytes()
    assert source.extra_files(entries[0].location, entries[0].meta) == {}  # no masks folder
    assert source.describe()["identities"] is True


def test_celebahq_without_identities_uses_hq_attribute_file(tmp_path: Path, photos: list[Path],
                                                            caplog) -> None:
    put(tmp_path, "CelebA-HQ-img/0.jpg", photos[0])
    put(tmp_path, "CelebA-HQ-img/notes.jpg", photos[1])  # not an index: skipped
    (tmp_path / "CelebAMask-HQ-attribute-anno.txt").write_text("1\nMale Smiling\n0.jpg 1 1\n")
    source = open_source("celeba-hq", tmp_path)
    (entry,) = source.list()
    assert (entry.key, entry.identity) == ("hq00000", "hq00000")
    assert entry.meta["celeba_attributes"] == {"Male": True, "Smiling": True}
    assert "every image is its own identity" in caplog.text
    assert source.describe()["identities"] is False


def test_celebahq_attributes_join_without_identity_file(tmp_path: Path, photos: list[Path]) -> None:
    root = hq_tree(tmp_path, photos)
    (root / "identity_CelebA.txt").unlink()
    entries = list(open_source("celeba-hq", root).list())
    assert [(e.key, e.identity) for e in entries] == [(f"hq0000{i}", f"hq0000{i}") for i in range(3)]
    assert entries[0].meta["celeba_file"] == "000002.jpg"
    assert entries[0].meta["celeba_attributes"]["Male"] is True


def test_merge_parts_precedence_and_upscale() -> None:
    labels = merge_parts(PARTS, size=(250, 250))
    assert labels.shape == (250, 250) and labels.dtype == np.uint8
    at = lambda x, y: CLASSES[labels[2 * y, 2 * x]]  # noqa: E731 - (x, y) in mask pixels
    assert at(60, 60) == "nose"
    assert at(35, 45) == "eye_g"  # inside both eye and glasses
    assert at(27, 37) == "eye_g" and at(60, 90) == "skin"
    assert at(50, 22) == "hair"  # hair and skin overlap
    assert at(60, 105) == "neck" and at(60, 120) == "cloth"
    assert at(2, 2) == "background"
    assert set(np.unique(labels)) == {0, 1, 6, 10, 14, 16, 17}
    assert not (labels == CLASSES.index("l_eye")).any()  # fully covered by the glasses
    # nearest neighbour: every 2x2 block is one label
    assert (labels[::2, ::2] == labels[1::2, 1::2]).all()
    small = merge_parts({"skin": PARTS["skin"], "nose": cv2.resize(PARTS["nose"], (250, 250))})
    assert small.shape == (125, 125) and small[60, 60] == CLASSES.index("nose")
    with pytest.raises(ValueError):
        merge_parts({"tail": PARTS["skin"]})
    with pytest.raises(ValueError):
        merge_parts({})


def test_celebahq_ground_truth_file(tmp_path: Path, photos: list[Path]) -> None:
    root = hq_tree(tmp_path, photos)
    write_parts(root, 0, PARTS)
    (root / "CelebAMask-HQ-mask-anno" / "0" / "00001_skin.png").write_bytes(b"not a png")
    source = open_source("celeba-hq", root)
    assert source.files == (gt.GT_PARSING,)
    entries = list(source.list())
    files = source.extra_files(entries[0].location, entries[0].meta)
    labels = cv2.imdecode(np.frombuffer(files[gt.GT_PARSING], np.uint8), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (250, 250) and labels.dtype == np.uint8  # the source frame
    assert np.array_equal(labels, merge_parts(PARTS, size=(250, 250)))
    with pytest.raises(ValueError, match="unreadable mask"):
        source.extra_files(entries[1].location, entries[1].meta)
    assert source.extra_files(entries[2].location, entries[2].meta) == {}  # no parts for index 2


def test_celebahq_run_carries_ground_truth_into_the_shard(tmp_path: Path, photos: list[Path]) -> None:
    import webdataset as wds

    from pipeline.config import resolve
    from pipeline.core.runner import run

    root = tmp_path / "CelebAMask-HQ"
    for i, photo in enumerate(photos[:2]):
        put(root, f"CelebA-HQ-img/{i}.jpg", photo)
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(MAPPING)
    (root / "identity_CelebA.txt").write_text("000002.jpg 2880\n000003.jpg 17\n")
    write_parts(root, 0, PARTS)  # only image 0 has masks
    out = tmp_path / "out"
    cfg = resolve(flags={"source": "celeba-hq", "input": str(root), "out": str(out),
                         "stages": "landmarks", "executor": "local"})
    run(cfg, quiet=True)
    tars = sorted(map(str, (out / "shards").glob("*.tar")))
    samples = {s["__key__"]: s for s in wds.WebDataset(tars, shardshuffle=False)}
    assert set(samples) == {"02880_hq00000", "00017_hq00001"}
    first, second = samples["02880_hq00000"], samples["00017_hq00001"]
    labels = cv2.imdecode(np.frombuffer(first[gt.GT_PARSING], np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(labels, merge_parts(PARTS, size=(250, 250)))
    assert gt.GT_PARSING not in second and "lmk.npy" in first
    meta = json.load(io.BytesIO(first["json"]))
    assert meta["identity"] == "02880" and meta["source"]["meta"]["celeba_file"] == "000002.jpg"
