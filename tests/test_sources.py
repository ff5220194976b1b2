"""Sources: folder, CASIA folder layout, CelebA, the bundled sample, keys and collisions."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from pipeline.core.imaging import decode_rgb
from pipeline.sources import SOURCES, Entry, get_source, open_source, sanitize_key
from pipeline.sources.base import MAX_KEY_LEN, resolve_collisions
from pipeline.sources.folder import walk_images
from tests.conftest import lfw_photos, put


@pytest.fixture
def photos() -> list[Path]:
    """Six real face photos of three people."""
    return lfw_photos(("Colin_Powell", "Tony_Blair", "Hugo_Chavez"))


def by_location(source) -> dict[str, Entry]:
    return {e.location: e for e in source.list()}


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parts, key",
    [
        (("0000045", "001"), "0000045_001"),
        (("John Smith", "photo 1.final"), "John_Smith_photo_1_final"),
        (("José", "ü"), "Jos___"),
        (("-id", "x"), "_id_x"),
        (("",), "_"),
        (("a/b", "..", "c"), "a_b____c"),
    ],
)
def test_sanitize_key(parts: tuple[str, ...], key: str) -> None:
    assert sanitize_key(*parts) == key


def test_long_keys_are_cut_with_a_hash() -> None:
    a, b = sanitize_key("x" * 200, "1"), sanitize_key("x" * 200, "2")
    assert len(a) == len(b) == MAX_KEY_LEN and a != b
    assert sanitize_key("x" * 200, "1") == a  # stable


def test_collision_suffix_never_reuses_a_real_key() -> None:
    first = resolve_collisions([Entry("k", "i", "b"), Entry("k", "i", "a")])
    assert [e.location for e in first] == ["a", "b"] and first[0].key == "k"
    suffixed = first[1].key  # what "b" gets when nothing else is in the way
    entries = resolve_collisions(
        [Entry("k", "i", "a"), Entry("k", "i", "b"), Entry(suffixed, "i", "c")]
    )
    keys = [e.key.lower() for e in entries]
    assert len(set(keys)) == 3
    assert entries[2].key == suffixed and entries[2].error == ""
    assert entries[1].error == "key_collision: a"


# --- folder ---------------------------------------------------------------------------------


def test_folder_layout(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "Colin Powell/001.jpg", photos[0])
    put(tmp_path, "Colin Powell/sub/dir/002.JPEG", photos[1])
    put(tmp_path, "Tony_Blair/a.b.png", photos[2])
    put(tmp_path, "00042.jpg", photos[3])  # flat file (FFHQ-style)
    put(tmp_path, "Tony_Blair/.hidden.jpg", photos[4])
    put(tmp_path, ".cache/x/1.jpg", photos[4])
    put(tmp_path, "Tony_Blair/notes.txt", photos[5])
    put(tmp_path, "Tony_Blair/clip.gif", photos[5])
    source = open_source("folder", tmp_path)
    entries = list(source.list())
    assert [(e.key, e.identity, e.location, e.error) for e in entries] == [
        ("00042", "00042", "00042.jpg", ""),
        ("Colin_Powell_001", "Colin Powell", "Colin Powell/001.jpg", ""),
        ("Colin_Powell_sub_dir_002", "Colin Powell", "Colin Powell/sub/dir/002.JPEG", ""),
        ("Tony_Blair__hidden", "Tony_Blair", "Tony_Blair/.hidden.jpg", ""),  # a dot name with an image extension
        ("Tony_Blair_a_b", "Tony_Blair", "Tony_Blair/a.b.png", ""),
        ("Tony_Blair_clip", "Tony_Blair", "Tony_Blair/clip.gif", ""),
    ]
    assert source.skipped == {"non_image": 1, "hidden_folder": 1}  # notes.txt, .cache/
    assert source.read("Colin Powell/sub/dir/002.JPEG") == photos[1].read_bytes()
    assert list(source.list()) == entries  # deterministic
    assert decode_rgb(source.read(entries[0].location))[0].shape == (250, 250, 3)


def test_collisions_do_not_overwrite(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "id/a.jpg", photos[0])
    put(tmp_path, "id/a.png", photos[1])
    put(tmp_path, "id/A.jpeg", photos[2])
    put(tmp_path, "id/a b.jpg", photos[3])
    put(tmp_path, "id/a_b.jpg", photos[4])
    entries = by_location(open_source("folder", tmp_path))
    if len(entries) < 5:
        pytest.skip("case-insensitive file system")
    assert entries["id/A.jpeg"].key == "id_A" and entries["id/A.jpeg"].error == ""
    for loc in ("id/a.jpg", "id/a.png"):
        assert entries[loc].error == "key_collision: id/A.jpeg"
        assert entries[loc].key.startswith("id_a_") and "." not in entries[loc].key
    assert entries["id/a b.jpg"].key == "id_a_b" and entries["id/a b.jpg"].error == ""
    assert entries["id/a_b.jpg"].error == "key_collision: id/a b.jpg"
    assert len({e.key.lower() for e in entries.values()}) == 5


def test_unicode_and_leading_dash(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "Zoë/-1.jpg", photos[0])
    put(tmp_path, "-x/photo.webp", photos[1])
    entries = by_location(open_source("folder", tmp_path))
    assert entries["Zoë/-1.jpg"].key == "Zo__-1" and entries["Zoë/-1.jpg"].identity == "Zoë"
    assert entries["-x/photo.webp"].key == "_x_photo"


def test_symlink_loop_and_escape(tmp_path: Path, photos: list[Path]) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    put(root, "id/1.jpg", photos[0])
    put(outside, "2.jpg", photos[1])
    os.symlink(root / "id", root / "id" / "loop")  # a folder linking to its parent
    os.symlink(root, root / "id" / "top")
    os.symlink(outside, root / "escape")
    os.symlink(outside / "2.jpg", root / "id" / "linked.jpg")
    assert walk_images(root) == ["id/1.jpg"]
    source = open_source("folder", root)
    # links leading out are rows with a reason, never followed; aliases of visited folders are not rows
    assert [(e.location, e.error) for e in source.list()] == [
        ("escape", "link_escapes_input"), ("id/1.jpg", ""), ("id/linked.jpg", "link_escapes_input")]
    for bad in ("../outside/2.jpg", "escape/2.jpg", "id/linked.jpg", str(outside / "2.jpg")):
        with pytest.raises(ValueError):
            source.read(bad)


def test_symlinks_inside_root_are_followed(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "store/1.jpg", photos[0])
    os.symlink(tmp_path / "store", tmp_path / "alias")
    os.symlink(tmp_path / ".hidden", tmp_path / "shown")
    put(tmp_path, ".hidden/2.jpg", photos[1])
    # Each real folder is listed once, under its real path when it has a visible one.
    assert walk_images(tmp_path) == ["shown/2.jpg", "store/1.jpg"]


@pytest.mark.parametrize("name", ["folder", "casia-webface", "celeba"])
def test_missing_or_bad_input(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError, match="not found") as err:
        open_source(name, tmp_path / "nope")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="needs an input folder"):
        open_source(name, None)
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        open_source(name, tmp_path / "file.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as err:
        open_source(name, tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "\n" not in str(err.value)


# --- casia (folder layout; RecordIO is in test_recordio.py) ----------------------------------


def test_casia_folder_layout(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "0000045/001.jpg", photos[0])
    put(tmp_path, "0000045/002.jpg", photos[1])
    put(tmp_path, "0000099/001.jpg", photos[2])
    put(tmp_path, "stray.jpg", photos[3])  # not in an identity folder: an error row
    source = get_source("casia-webface")(tmp_path)
    assert source.layout == "folder"
    entries = list(source.list())
    assert [(e.key, e.identity) for e in entries] == [
        ("0000045_001", "0000045"),
        ("0000045_002", "0000045"),
        ("0000099_001", "0000099"),
        ("stray", "unknown"),
    ]
    assert entries[3].error == "not_in_identity_folder"
    assert source.read(entries[2].location) == photos[2].read_bytes()
    clone = pickle.loads(pickle.dumps(source))
    assert clone.read(entries[0].location) == photos[0].read_bytes()


def test_casia_flat_only_is_wrong_layout(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "001.jpg", photos[0])
    with pytest.raises(ValueError, match="one folder per identity"):
        open_source("casia-webface", tmp_path)


# --- celeba ---------------------------------------------------------------------------------

ATTRS = "3\n5_o_Clock_Shadow Male  Smiling\n000001.jpg -1  1 1\n000002.jpg  1 -1 -1\nbroken 1\n"


@pytest.mark.parametrize("official", [False, True])
def test_celeba(tmp_path: Path, photos: list[Path], official: bool) -> None:
    img, anno = (tmp_path / "Img", tmp_path / "Anno") if official else (tmp_path, tmp_path)
    for i, photo in enumerate(photos[:3], 1):
        put(img, f"img_align_celeba/{i:06d}.jpg", photo)
    anno.mkdir(exist_ok=True)
    (anno / "identity_CelebA.txt").write_text(
        "000001.jpg 2880\n000002.jpg 2880\n000003.jpg 7\n000004.jpg 10177\nbad line here\n"
    )
    (anno / "list_attr_celeba.txt").write_text(ATTRS)
    source = open_source("celeba", tmp_path)
    entries = list(source.list())
    assert [(e.key, e.identity, e.error) for e in entries] == [
        ("02880_000001", "02880", ""),
        ("02880_000002", "02880", ""),
        ("00007_000003", "00007", ""),
        ("10177_000004", "10177", "missing_file"),
    ]
    assert entries[0].meta == {
        "celeba_attributes": {"5_o_Clock_Shadow": False, "Male": True, "Smiling": True}
    }
    assert entries[1].meta["celeba_attributes"]["5_o_Clock_Shadow"] is True
    assert entries[2].meta == {}
    assert source.read(entries[2].location) == photos[2].read_bytes()


def test_celeba_without_attributes(tmp_path: Path, photos: list[Path]) -> None:
    put(tmp_path, "img_celeba/000001.jpg", photos[0])
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 12\n")
    (entry,) = open_source("celeba", tmp_path).list()
    assert (entry.key, entry.identity, entry.location, entry.meta) == (
        "00012_000001", "00012", "img_celeba/000001.jpg", {}
    )


# --- sample and registry --------------------------------------------------------------------


def test_sample_source() -> None:
    source = open_source("sample")
    entries = list(source.list())
    assert len(entries) == 9 and len({e.identity for e in entries}) == 3
    assert all(not e.error and "." not in e.key for e in entries)
    for entry in entries[:2]:
        rgb, _, reason = decode_rgb(source.read(entry.location))
        assert reason == "" and rgb.shape == (250, 250, 3)
    assert get_source("sample")(None).describe()["source"] == "sample"


def test_registry() -> None:
    assert set(SOURCES) == {"casia-webface", "celeba", "celeba-hq", "ffhq", "folder", "sample"}
    assert all(cls.name == name for name, cls in SOURCES.items())
    with pytest.raises(ValueError, match="unknown source 'nope'; known: casia-webface"):
        get_source("nope")
