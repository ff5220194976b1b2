"""Is a JPEG's scan data complete? The marker layout of its first image, and the checked decode.

libjpeg treats an end-of-image marker inside the scan data as "premature end of data", warns
(Pillow silences the warning) and fills the rest of the image with grey. So an end marker is
no proof of a complete file. ``checked_source`` (used by ``imaging.decode_rgb``) tells:

- single-scan files (baseline and most sequential JPEGs) are decoded with the end marker
  replaced by zero padding: a complete scan needs no end marker, a cut one makes libjpeg ask
  for more data, which Pillow reports as truncated (no extra decode);
- progressive and multi-scan files must have scans covering every component (and, when
  progressive, every DCT coefficient down to the last bit, ``Al = 0``), which a file cut before
  its last scan has not; a cut inside the last scan is caught by a second decode with filler
  bytes before the end marker, which must give the same pixels.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

from PIL import Image

# SOF markers of the Huffman and arithmetic processes (C4 = DHT, C8 = JPG, CC = DAC are not SOFs)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field
# The next marker after scan data: FF not followed by a stuffed 00, a restart marker or fill FF.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# libjpeg reads up to 25 bits ahead of the last code of a scan; zeros decode as data, so a cut
# scan still runs out a few blocks later.
_SCAN_PADDING = b"\x00" * 16
_SCAN_FILLER = b"\x7f" * 16  # bits a cut scan would decode differently from libjpeg's zero fill


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


def checked_source(im: Image.Image, data: bytes) -> tuple[Image.Image | None, Image.Image | None, str]:
    """(image to load, twin to compare with or None, "") for a JPEG, or (None, None, "truncated").

    An end marker after a cut scan is not enough (libjpeg fills the rest with grey). A
    single-scan file is decoded with its end marker replaced by a few zero bytes: enough for
    libjpeg's bit read-ahead after a complete scan, while a cut scan runs out of data and fails
    as truncated. A multi-scan file must carry every scan (``scans_complete``), and its last
    scan must not depend on what follows it: a twin with filler bytes before the end marker
    must decode to the same pixels (a complete scan skips the filler; a cut one decodes it).
    """
    layout = parse(data)
    if layout is None or layout.eoi is None or not scans_complete(layout):
        return None, None, "truncated"
    head = data[: layout.eoi]
    if len(layout.scans) != 1:
        return im, Image.open(io.BytesIO(head + _SCAN_FILLER + b"\xff\xd9"), formats=("JPEG",)), ""
    return Image.open(io.BytesIO(head + _SCAN_PADDING), formats=("JPEG",)), None, ""


def same_pixels(a: Image.Image, b: Image.Image, rows: int = 256) -> bool:
    """Pixel equality, band by band (no full-size copy of either image)."""
    if a.size != b.size or a.mode != b.mode:
        return False
    width, height = a.size
    return all(a.crop((0, y, width, min(y + rows, height))).tobytes()
               == b.crop((0, y, width, min(y + rows, height))).tobytes() for y in range(0, height, rows))
