"""Truncated-JPEG check on real photos: false positives, detection, and its cost per decode.

Every JPEG under ``shared/faces`` is re-encoded in several variants (baseline as shipped,
progressive, optimised progressive, 4:4:4, grey, grey progressive, CMYK, restart markers); each
variant must decode (no false positive), and each cut at 30/40/50% with ``FF D9`` appended must
be ``truncated``. Timing: ``imaging.decode_rgb`` vs a plain Pillow decode of the same bytes.
Run: ``python -m bench.jpeg_truncation``.
"""
from __future__ import annotations

import io
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.imaging import decode_rgb

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"


def _encode(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def variants(path: Path) -> dict[str, bytes]:
    rgb = Image.open(path).convert("RGB")
    return {"original": path.read_bytes(), "progressive": _encode(rgb, progressive=True),
            "progressive_opt": _encode(rgb, progressive=True, optimize=True, quality=90),
            "444": _encode(rgb, subsampling=0), "gray": _encode(rgb.convert("L")),
            "gray_progressive": _encode(rgb.convert("L"), progressive=True),
            "cmyk": _encode(rgb.convert("CMYK")), "restart": _encode(rgb, restart_marker_blocks=4)}


def _plain(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def main() -> None:
    files = sorted(p for p in FACES.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    false_pos, cuts, caught = 0, 0, 0
    cost: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for path in files:
        for name, data in variants(path).items():
            t0 = time.perf_counter()
            _plain(data)
            t1 = time.perf_counter()
            _, _, reason = decode_rgb(data)
            t2 = time.perf_counter()
            kind = "progressive" if "progressive" in name else "single-scan"
            cost[kind][0] += t1 - t0
            cost[kind][1] += t2 - t1
            cost[kind][2] += 1
            false_pos += bool(reason)
            for fraction in (0.3, 0.4, 0.5):
                cuts += 1
                caught += decode_rgb(data[: int(len(data) * fraction)] + b"\xff\xd9")[2] == "truncated"
    n = sum(c[2] for c in cost.values())
    print(f"{len(files)} photos, {n} complete variants: {false_pos} false positives; "
          f"{caught} of {cuts} cut files (30/40/50% + FF D9) reported truncated")
    print("| files | n | plain Pillow ms | decode_rgb ms |")
    print("|---|---|---|---|")
    for kind, (plain, ours, count) in sorted(cost.items()):
        print(f"| {kind} | {count} | {plain / count * 1e3:.2f} | {ours / count * 1e3:.2f} |")


if __name__ == "__main__":
    main()
