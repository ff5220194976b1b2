"""Peak memory of ``imaging.decode_rgb`` per pixel mode, against its ``decode_mb`` estimate.

Each case decodes one synthetic image in a fresh process and reports the growth of the peak
resident set over the process's state just before the decode (so imports and the compressed
bytes do not count). Run: ``python -m bench.decode_memory [side]`` (default 3000).
"""
from __future__ import annotations

import io
import subprocess
import sys

CASES = {  # name: (PIL mode to build, save format)
    "RGB": ("RGB", "PNG"), "L": ("L", "PNG"), "P": ("P", "PNG"), "RGBA": ("RGBA", "PNG"),
    "CMYK": ("CMYK", "TIFF"), "I;16": ("I;16", "PNG"), "I": ("I", "TIFF"), "JPEG RGB": ("RGB", "JPEG"),
}

CHILD = r"""
import io, resource, sys
import numpy as np
from PIL import Image
from pipeline import imaging
mode, fmt, side = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
noise = rng.integers(0, 255, (side // 8 + 1, side // 8 + 1), dtype=np.uint8)
base = Image.fromarray(np.kron(noise, np.ones((8, 8), np.uint8))[:side, :side])
im = base.convert("RGB").convert(mode) if mode not in ("I;16", "I") else Image.fromarray(
    (np.asarray(base).astype(np.uint16) * 257).astype(np.uint16 if mode == "I;16" else np.int32))
buf = io.BytesIO(); im.save(buf, fmt); data = buf.getvalue(); del im, base, buf
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rgb, info, reason = imaging.decode_rgb(data, max_decode_mb=10**6)
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(info.mode, reason or "ok", peak / side / side, imaging.decode_mb(side, side, info.mode) * 1e6 / side / side)
"""


def main(side: int = 3000) -> None:
    print(f"| case | decoded mode | measured peak B/px | estimate B/px ({side}x{side}) |")
    print("|---|---|---|---|")
    for name, (mode, fmt) in CASES.items():
        out = subprocess.run([sys.executable, "-c", CHILD, mode, fmt, str(side)], capture_output=True, text=True)
        if out.returncode:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1]} | | |")
            continue
        got_mode, reason, measured, estimate = out.stdout.split()[-4:]
        print(f"| {name} ({fmt}) | {got_mode} {reason} | {float(measured):.1f} | {float(estimate):.1f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
