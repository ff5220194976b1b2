"""Peak memory of ``imaging.decode_rgb`` per pixel mode, against its ``decode_mb`` estimate.

Each case decodes one synthetic image in a fresh process and reports the growth of the peak
resident set (VmHWM, reset through /proc/self/clear_refs) over the resident set just before
the decode (so imports and the compressed
bytes do not count; the image is made in the parent, so making it does not raise the peak). Run: ``python -m bench.decode_memory [side]`` (default 3000).
"""
from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CASES = {  # name: (PIL mode to build, save format)
    "RGB": ("RGB", "PNG"), "L": ("L", "PNG"), "P": ("P", "PNG"), "RGBA": ("RGBA", "PNG"),
    "CMYK": ("CMYK", "TIFF"), "I;16": ("I;16", "PNG"), "I": ("I", "TIFF"), "JPEG RGB": ("RGB", "JPEG"),
    "JPEG progressive": ("RGB", "JPEG progressive"),
}

CHILD = r"""
import sys
from pipeline.core import imaging
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
before = status("VmRSS:")
rgb, info, reason = imaging.decode_rgb(data, max_decode_mb=10**6)
peak = status("VmHWM:") - before
side = info.width
estimate = imaging.decode_mb(side, side, info.mode, progressive=sys.argv[2] == "1")
print(info.mode, reason or "ok", peak / side / side, estimate * 1e6 / side / side)
"""


def image_bytes(mode: str, fmt: str, side: int) -> bytes:
    """A side x side image of ``mode`` with 8x8 blocks of noise (so JPEGs carry real data)."""
    noise = np.random.default_rng(0).integers(0, 255, (side // 8 + 1, side // 8 + 1), dtype=np.uint8)
    gray = np.kron(noise, np.ones((8, 8), np.uint8))[:side, :side]
    if mode in ("I;16", "I"):
        im = Image.fromarray((gray.astype(np.uint16) * 257).astype(np.uint16 if mode == "I;16" else np.int32))
    else:
        im = Image.fromarray(np.dstack([gray, gray[::-1], gray[:, ::-1]])).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt.split()[0], progressive=fmt.endswith("progressive"))
    return buf.getvalue()


def main(side: int = 3000) -> None:
    """Print the markdown table (measured in fresh processes; the image is made here)."""
    print(f"| case | decoded mode | measured peak B/px | estimate B/px ({side}x{side}) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (mode, fmt) in CASES.items():
            path = Path(tmp) / "image"
            path.write_bytes(image_bytes(mode, fmt, side))
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(int(fmt.endswith("progressive")))],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1]} | | |")
                continue
            got_mode, reason, measured, estimate = out.stdout.split()[-4:]
            print(f"| {name} ({fmt}) | {got_mode} {reason} | {float(measured):.1f} | {float(estimate):.1f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
