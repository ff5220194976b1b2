"""The marker layout of a JPEG's first image, to tell a complete file from a truncated one.

libjpeg treats an end-of-image marker inside the scan data as "premature end of data", warns
(Pillow silences the warning) and fills the rest of the image with grey. So an end marker is
no proof of a complete file. What can be checked without decoding:

- single-scan files (baseline and most sequential JPEGs): decoding the bytes *before* the end
  marker must still succeed, because a complete scan needs no end marker to produce every
  row; a cut scan makes libjpeg ask for more data, which Pillow reports as truncated (see
  ``imaging.decode_rgb``);
- progressive and multi-scan files: the scans present must cover every component (and, when
  progressive, every DCT coefficient down to the last bit, ``Al = 0``); a file cut before its
  last scan does not. A cut inside the last scan is not detected this way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# SOF markers of the Huffman and arithmetic processes (C4 = DHT, C8 = JPG, CC = DAC are not SOFs)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field
# The next marker after scan data: FF not followed by a stuffed 00, a restart marker or fill FF.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


@dataclass
class Scan:
    """One start-of-scan header."""

    components: tuple[int, ...]
    ss: int
    se: int
    al: int


@dataclass
class JpegLayout:
    """Frame and scans of the first image, and where its end marker sits (None: no end marker)."""

    progressive: bool = False
    components: tuple[int, ...] = ()
    scans: list[Scan] = field(default_factory=list)
    eoi: int | None = None


def parse(data: bytes) -> JpegLayout | None:
    """The layout of the first image; None when the bytes do not start like a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    layout, pos, n = JpegLayout(), 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:  # stray bytes between segments: libjpeg skips them too
            nxt = data.find(b"\xff", pos)
            if nxt < 0:
                break
            pos = nxt
            continue
        code = data[pos + 1]
        if code == 0xFF:  # fill byte
            pos += 1
            continue
        if code == 0xD9:
            layout.eoi = pos
            break
        if code in _STANDALONE or code == 0xD8:
            pos += 2
            continue
        if pos + 4 > n:
            break
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        body = data[pos + 4:end]
        if code in _SOF and len(body) >= 6:
            layout.progressive = code in _PROGRESSIVE
            count = body[5]
            layout.components = tuple(body[6 + 3 * i] for i in range(count) if 6 + 3 * i < len(body))
        elif code == 0xDA and len(body) >= 1:
            count = body[0]
            ids = tuple(body[1 + 2 * i] for i in range(count) if 1 + 2 * i < len(body))
            tail = body[1 + 2 * count:1 + 2 * count + 3]
            if len(tail) == 3:
                layout.scans.append(Scan(ids, tail[0], tail[1], tail[2] & 0x0F))
            found = _NEXT_MARKER.search(data, end)
            if found is None:
                break
            pos = found.start()
            continue
        pos = end
    return layout


def scans_complete(layout: JpegLayout) -> bool:
    """Whether the scans present could have produced the whole image (see the module doc)."""
    if not layout.components or not layout.scans:
        return True  # nothing to judge; the decoder decides
    if layout.progressive:
        done = {c: [False] * 64 for c in layout.components}
        for scan in layout.scans:
            for c in scan.components:
                if c in done and scan.al == 0:
                    for k in range(scan.ss, min(scan.se, 63) + 1):
                        done[c][k] = True
        return all(all(bits) for bits in done.values())
    covered = {c for scan in layout.scans for c in scan.components}
    return set(layout.components) <= covered
