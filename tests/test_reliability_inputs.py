"""Fault matrix, inputs: cut JPEGs with an end marker, files that must not vanish, decode memory,
bundled weights found in --weights-dir. Real photos from lfw10; the HEIC file is a synthetic
ISO-BMFF header (no HEIC encoder exists here), enough for the signature check it exercises."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core import imaging
from pipeline.core.imaging import decode_rgb
from pipeline.core.runner import run
from stages.models import registry
from tests.conftest import lfw_people
from tests.test_runner import cfg_for, plugin_stages  # noqa: F401  (registers the plugin stages)

HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _cut(data: bytes, fraction: float) -> bytes:
    """The attack: cut the file and append an end-of-image marker."""
    return data[: int(len(data) * fraction)] + b"\xff\xd9"


def _photos(n: int) -> list[bytes]:
    return [p.read_bytes() for _, paths in lfw_people(n, 1) for p in paths]


def _variants(data: bytes) -> dict[str, bytes]:
    rgb = Image.open(io.BytesIO(data)).convert("RGB")
    return {"original": data, "progressive": _encode(rgb, "JPEG", progressive=True),
            "progressive_gray": _encode(rgb.convert("L"), "JPEG", progressive=True),
            "progressive_opt": _encode(rgb, "JPEG", progressive=True, optimize=True, quality=92),
            "444": _encode(rgb, "JPEG", subsampling=0), "restart": _encode(rgb, "JPEG", restart_marker_blocks=4),
            "gray": _encode(rgb.convert("L"), "JPEG")}


@pytest.mark.fault("truncated JPEG with an end marker", injection="real baseline and progressive JPEGs cut at 30/40/50% with FF D9 appended", behaviour="error reason truncated; the complete files (baseline, progressive, grey, 4:4:4, restart markers) decode unchanged", compared="reason per cut file; pixels of every complete variant vs a plain Pillow decode")
def test_cut_jpegs_with_an_end_marker_are_truncated(tmp_path):
    for photo in _photos(4):
        for name, data in _variants(photo).items():
            rgb, _, reason = decode_rgb(data)
            assert reason == "", name
            assert np.array_equal(rgb, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))), name
            for fraction in (0.3, 0.4, 0.5):
                assert decode_rgb(_cut(data, fraction))[2] == "truncated", (name, fraction)


def test_a_cut_inside_the_last_progressive_scan_is_caught():
    data = _encode(Image.open(io.BytesIO(_photos(1)[0])).convert("RGB"), "JPEG", progressive=True)
    last_scan = data.rfind(b"\xff\xda")
    cut = data[: last_scan + (len(data) - last_scan) // 2] + b"\xff\xd9"
    assert decode_rgb(cut)[2] == "truncated"


def test_formats_pil_cannot_decode_say_so(monkeypatch):
    assert decode_rgb(HEIC)[2] == "unsupported_format: heic"
    photo = Image.open(io.BytesIO(_photos(1)[0])).convert("RGB")
    if "AVIF" in imaging.FORMATS:
        avif = _encode(photo, "AVIF")
        assert decode_rgb(avif)[1].format == "AVIF" and decode_rgb(avif)[2] == ""
        monkeypatch.setattr(imaging, "FORMATS", tuple(f for f in imaging.FORMATS if f != "AVIF"))
        assert decode_rgb(avif)[2] == "unsupported_format: avif"
    assert decode_rgb(b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>")[2] == "unsupported_format: svg"


def _input_tree(tmp_path):
    """Identity folders with every kind of file the listing must either row or count."""
    tree, outside = tmp_path / "in", tmp_path / "outside"
    photos = _photos(3)
    photo = Image.open(io.BytesIO(photos[0])).convert("RGB")
    files = {
        "0000001/001.jpg": photos[1], "0000001/002.jpg": photos[2],
        "0000001/prog.jpg": _encode(photo, "JPEG", progressive=True),
        "0000001/cut30.jpg": _cut(photos[1], 0.3), "0000001/cut45.jpg": _cut(photos[2], 0.45),
        "0000001/cutprog.jpg": _cut(_encode(photo, "JPEG", progressive=True), 0.5),
        "0000002/anim.gif": _encode(photo, "GIF", save_all=True, append_images=[photo.rotate(90)]),
        "0000002/page.tif": _encode(photo, "TIFF"), "0000002/phone.heic": HEIC,
        "0000002/..dots..jpg": photos[1], "0000002/.DS_Store": b"\0" * 64, "0000002/._001.jpg": b"\0\5\26\7" * 8,
        "0000002/.x.jpg.swp": b"swap", "0000002/notes.txt": b"notes", "0000002/meta.json": b"{}",
        "0000002/big16.png": _encode(Image.fromarray(np.zeros((2000, 2000), np.uint16)), "PNG"),
        "README.txt": b"about", "cover.jpg": photos[1], ".git/thumb.jpg": photos[1],
    }
    if "AVIF" in imaging.FORMATS:
        files["0000002/photo.avif"] = _encode(photo, "AVIF")
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    outside.mkdir()
    (outside / "x.jpg").write_bytes(photos[0])
    (tree / "0000003").mkdir()
    os.symlink(outside / "x.jpg", tree / "0000003" / "outside.jpg")
    os.symlink(outside, tree / "0000003" / "outdir")
    os.symlink(tree / "0000003" / "missing.jpg", tree / "0000003" / "dangling.jpg")
    os.mkfifo(tree / "0000003" / "pipe.jpg")
    os.symlink(tree / "0000003" / "pipe.jpg", tree / "0000003" / "to_pipe.jpg")  # reading it would block
    os.symlink(tree / "0000003" / "self.jpg", tree / "0000003" / "self.jpg")  # never resolves
    os.symlink(outside / "x.jpg", tree / "0000003" / "out.txt")  # a non-image name: skipped, not followed
    return tree


EXPECTED_ROWS = {
    "0000001/001.jpg": "", "0000001/002.jpg": "", "0000001/prog.jpg": "",
    "0000001/cut30.jpg": "truncated", "0000001/cut45.jpg": "truncated", "0000001/cutprog.jpg": "truncated",
    "0000002/anim.gif": "", "0000002/page.tif": "", "0000002/phone.heic": "unsupported_format: heic",
    "0000002/..dots..jpg": "", "0000002/big16.png": "decode_memory: 2000x2000 I;16 needs ~36 MB, over max_decode_mb=20",
    "0000003/outside.jpg": "link_escapes_input", "0000003/outdir": "link_escapes_input",
    "0000003/dangling.jpg": "unreadable: FileNotFoundError", "0000003/self.jpg": "link_loop",
    "cover.jpg": "not_in_identity_folder",
}
EXPECTED_SKIPPED = {"hidden": 3, "non_image": 4, "hidden_folder": 1, "special_file": 2}


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inputs")
    out = tmp / "out"
    summary = run(cfg_for(_input_tree(tmp), out, max_decode_mb=20), quiet=True)
    return out, summary


@pytest.mark.fault("input files that used to vanish", injection="GIF, TIFF, HEIC, AVIF, ..dots..jpg, escaping file and folder links, a dangling link, a self-loop link, a FIFO and a link to it, a flat file in a CASIA root, .DS_Store/._*/swap files, .txt/.json, a hidden folder", behaviour="each image-like file is one row: decoded (GIF first frame, TIFF, AVIF where Pillow has it) or an error (unsupported_format: heic, link_escapes_input, link_loop, unreadable, not_in_identity_folder); the rest is counted by reason in the run summary", compared="source manifest location -> error; summary skipped_files and reasons; every stage manifest has every key")
def test_every_input_file_is_a_row_or_counted(hostile_run):
    out, summary = hostile_run
    rows = {r["location"]: r for r in pq.read_table(out / "manifests" / "source").to_pylist()}
    expected = dict(EXPECTED_ROWS)
    if "AVIF" in imaging.FORMATS:
        expected["0000002/photo.avif"] = ""
    assert {loc: r["error"] for loc, r in rows.items()} == expected
    assert all((r["status"] == "error") == bool(r["error"]) for r in rows.values())
    assert "first_frame_of:2" in rows["0000002/anim.gif"]["note"] and rows["0000002/page.tif"]["format"] == "TIFF"
    assert summary["skipped_files"] == EXPECTED_SKIPPED
    reasons = summary["stages"]["source"]["reasons"]
    assert reasons["link_escapes_input"] == 2 and reasons["truncated"] == 3
    keys = sorted(r["key"] for r in rows.values())
    assert sorted(pq.read_table(out / "manifests" / "colour").column("key").to_pylist()) == keys


def test_truncated_rows_are_not_packed(hostile_run):
    out, summary = hostile_run
    rows = pq.read_table(out / "manifests" / "source").to_pylist()
    ok = sum(r["status"] == "ok" for r in rows)
    assert summary["packed"] == ok


_MEASURE = """
import sys
from pipeline.core.imaging import decode_rgb
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))
data = open(sys.argv[1], 'rb').read()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark to the current RSS
before = status("VmRSS:")
rgb, info, reason = decode_rgb(data, max_decode_mb=int(sys.argv[2]))
print(reason or 'ok', (status("VmHWM:") - before) * 1024 // 1_000_000)
"""


@pytest.mark.fault("small 16-bit PNG of 6000x6000", injection="a 70 KB 16-bit greyscale PNG of 6000x6000", behaviour="decoded within its estimate (pixels x 9 bytes per pixel for I;16, 324 MB) instead of ~1 GB; with a lower max_decode_mb refused from the header with reason decode_memory", compared="peak RSS growth of the decode in a fresh process; the reason")
def test_sixteen_bit_png_decode_memory_is_bounded(tmp_path):
    path = tmp_path / "big16.png"
    values = np.zeros((6000, 6000), np.uint16)
    values[::7] = 40000
    path.write_bytes(_encode(Image.fromarray(values), "PNG"))
    assert path.stat().st_size < 200_000
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def measure(limit: int) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(limit)], capture_output=True,
                             text=True, check=True, env=env)
        reason, _, mb = out.stdout.strip().rpartition(" ")
        return reason, int(mb)

    estimate = imaging.decode_mb(6000, 6000, "I;16")
    reason, peak = measure(imaging.DEFAULT_MAX_DECODE_MB)
    assert reason == "ok" and peak <= estimate, (peak, estimate)
    reason, peak = measure(100)
    assert reason == f"decode_memory: 6000x6000 I;16 needs ~{estimate} MB, over max_decode_mb=100" and peak < 50


@pytest.fixture
def weights_dir(tmp_path):
    return tmp_path / "weights"


def test_weights_dir_copy_of_a_bundled_file_is_used_when_it_verifies(weights_dir):
    name = "mobilefacenet"
    spec = registry.get(name)
    weights_dir.mkdir()
    shutil.copyfile(registry.BUNDLED_DIR / spec.filename, weights_dir / spec.filename)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert registry.resolve(name, weights_dir) == weights_dir / spec.filename
    (weights_dir / spec.filename).write_bytes(b"tampered")
    with pytest.warns(UserWarning, match="not using .* sha256 .* is not the pinned"):
        assert registry.resolve(name, weights_dir) == registry.BUNDLED_DIR / spec.filename
    assert registry.resolve(name, weights_dir / "empty") == registry.BUNDLED_DIR / spec.filename
