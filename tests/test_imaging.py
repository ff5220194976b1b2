"""Safe decoding: exact reasons for odd files, conversions with notes, bombs refused unread."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.core import imaging, jpeg_layout
from pipeline.core.imaging import decode_rgb, probe

try:
    from tests.fixtures.odd import EXPECTED, NOTES, bomb_png, odd_bytes, write_odd_files
except ImportError:  # tests/ itself is on sys.path instead of the repo root
    from fixtures.odd import EXPECTED, NOTES, bomb_png, odd_bytes, write_odd_files

LFW = Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw10"
ODD = odd_bytes()
REASONS = {"", "empty_file", "not_an_image", "truncated", "too_small", "decompression_bomb"}


@pytest.fixture
def photo() -> bytes:
    path = LFW / "Colin_Powell" / "Colin_Powell_0001.jpg"
    if not path.exists():
        pytest.skip(f"real face photos not found at {LFW}")
    return path.read_bytes()


@pytest.fixture
def no_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decode fail loudly."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)


def test_write_odd_files(tmp_path: Path) -> None:
    expected = write_odd_files(tmp_path / "odd")
    assert expected == EXPECTED
    assert sorted(p.name for p in (tmp_path / "odd").iterdir()) == sorted(EXPECTED)
    for name, reason in expected.items():
        assert decode_rgb((tmp_path / "odd" / name).read_bytes())[2] == reason, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_odd_file_reason(name: str) -> None:
    rgb, info, reason = decode_rgb(ODD[name])
    assert reason == EXPECTED[name]
    if reason:
        assert rgb is None
    else:
        assert rgb is not None and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert rgb.flags["C_CONTIGUOUS"]
        assert (info.height, info.width) == rgb.shape[:2]
        assert NOTES[name] in info.note


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_probe_agrees_except_for_pixel_errors(name: str) -> None:
    info, reason = probe(ODD[name])
    assert reason == ("" if EXPECTED[name] == "truncated" else EXPECTED[name])


def test_alpha_composited_on_white() -> None:
    rgb, info, _ = decode_rgb(ODD["alpha.png"])
    assert info.mode == "RGBA" and info.note == "converted:RGBA->RGB"
    assert (rgb[:, 0] == 255).all()  # the leftmost column is fully transparent


def test_sixteen_bit_scaled_not_clipped() -> None:
    rgb, info, _ = decode_rgb(ODD["gray16.png"])
    source = np.asarray(Image.open(io.BytesIO(ODD["gray16.png"]))).astype(np.float64)
    assert np.abs(rgb[:, :, 0] - source / 257).max() <= 0.5 + 1e-9
    assert rgb.max() > 200 and (rgb[:, :, 0] == rgb[:, :, 2]).all()


def test_exif_orientation_applied() -> None:
    rgb, info, _ = decode_rgb(ODD["rotated.jpg"])
    assert rgb.shape == (64, 48, 3) and (info.width, info.height) == (48, 64)
    assert probe(ODD["rotated.jpg"])[0].width == 48


def test_animated_takes_first_frame() -> None:
    rgb, info, _ = decode_rgb(ODD["animated.png"])
    assert info.note == "first_frame_of:3"
    assert rgb[0, 0].tolist() == [255, 0, 0]


def test_real_photo(photo: bytes) -> None:
    rgb, info, reason = decode_rgb(photo)
    assert reason == "" and rgb.shape == (250, 250, 3)
    assert info == imaging.Probe(250, 250, "JPEG", "RGB", "")


def test_probe_reads_header_only(photo: bytes, no_full_decode: None) -> None:
    info, reason = probe(photo)
    assert reason == "" and (info.width, info.height, info.format) == (250, 250, "JPEG")


def test_bomb_refused_before_decode(no_full_decode: None) -> None:
    data = bomb_png(100_000, 100_000)
    assert len(data) < 200
    assert decode_rgb(data) == (None, None, "decompression_bomb")
    # Above our limit but below PIL's own: our header check must refuse it.
    rgb, info, reason = decode_rgb(bomb_png(7000, 7000))
    assert (rgb, reason) == (None, "decompression_bomb") and info.width == 7000


def test_max_pixels_and_min_side_are_parameters(photo: bytes, no_full_decode: None) -> None:
    assert decode_rgb(photo, max_pixels=250 * 250 - 1)[2] == "decompression_bomb"
    assert decode_rgb(photo, min_side=251)[2] == "too_small"


def test_unsupported_mode() -> None:
    buf = io.BytesIO()
    Image.new("F", (32, 32), 0.5).save(buf, "TIFF")
    rgb, info, reason = decode_rgb(buf.getvalue())
    assert (rgb, reason) == (None, "unsupported_mode: F") and info.mode == "F"


def test_other_formats_refused() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "PPM")
    assert decode_rgb(buf.getvalue())[2] == "not_an_image"


def test_truncation_detected_even_if_pil_is_told_to_allow_it(
    photo: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert decode_rgb(photo[:-200])[2] == "truncated"
    assert jpeg_layout.parse(photo).eoi is not None and jpeg_layout.parse(photo[:-2]).eoi is None


def test_never_raises_on_garbage(photo: bytes) -> None:
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(n) for n in (1, 7, 100, 5000)]
    blobs += [photo[:n] for n in range(0, len(photo), len(photo) // 17)]
    blobs += [photo[:600] + rng.bytes(3000) + photo[-2:], b"\x89PNG\r\n\x1a\n" + rng.bytes(64)]
    for data in blobs:
        rgb, info, reason = decode_rgb(data)
        assert reason in REASONS and (rgb is None) == bool(reason)
        assert probe(data)[1] in REASONS
