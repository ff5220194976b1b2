"""MXNet RecordIO (``train.rec`` + ``train.idx``) in plain Python, as packed by insightface.

A record is ``uint32 magic, uint32 lrecord, payload, zero padding to 4 bytes``; ``lrecord``
holds a continuation flag (upper 3 bits) and the part length (lower 29 bits). A payload that
contains the magic word at a 4-aligned position is split there into parts (flag 1 = first,
2 = middle, 3 = last) and the magic is dropped; reading joins the parts with it again.

An image payload starts with the IRHeader ``struct "<IfQQ"`` (flag, label, id, id2); when
flag > 0, ``flag`` float32 labels follow and replace ``label``; the image bytes come after.
In insightface's files record 0 is a header whose first label is one past the last image
index; records from there on describe identity ranges and are not images.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)
_LEN_MASK = (1 << 29) - 1


class RecordIOError(ValueError):
    """A record that cannot be read (bad magic, short file, broken parts)."""


@dataclass
class IRHeader:
    """The image record header: ``labels`` holds one value, or ``flag`` values when flag > 0."""

    flag: int
    labels: tuple[float, ...]
    id: int
    id2: int


def read_index(idx_path: Path) -> list[tuple[int, int]]:
    """``(record index, byte offset)`` pairs from a ``.idx`` file, sorted by index."""
    pairs = []
    for number, line in enumerate(idx_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            pairs.append((int(fields[0]), int(fields[1])))
        except (IndexError, ValueError):
            raise RecordIOError(f"{idx_path}:{number}: expected 'index<TAB>offset', got {line!r}")
    return sorted(pairs)


def read_record(f: BinaryIO, offset: int) -> bytes:
    """The payload of the record starting at ``offset``, multi-part records joined."""
    f.seek(offset)
    parts = []
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise RecordIOError(f"record at {offset}: file ends inside a record header")
        magic, lrecord = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(f"record at {offset}: bad magic {magic:#010x}")
        cflag, length = lrecord >> 29, lrecord & _LEN_MASK
        if parts and cflag not in (2, 3) or not parts and cflag not in (0, 1):
            raise RecordIOError(f"record at {offset}: unexpected part flag {cflag}")
        data = f.read(length)
        if len(data) < length:
            raise RecordIOError(f"record at {offset}: file ends inside a record")
        parts.append(data)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts)
        f.seek((4 - length % 4) % 4, 1)


def read_head(f: BinaryIO, offset: int) -> bytes:
    """The start of a record's payload: enough for its IRHeader and labels, not the image."""
    f.seek(offset)
    head = f.read(8)
    if len(head) < 8 or struct.unpack_from("<I", head)[0] != MAGIC:
        return read_record(f, offset)  # raises with the precise reason
    lrecord = struct.unpack_from("<I", head, 4)[0]
    cflag, length = lrecord >> 29, lrecord & _LEN_MASK
    if cflag != 0:
        return read_record(f, offset)
    prefix = f.read(min(length, _IR_SIZE))
    if len(prefix) == _IR_SIZE and (flag := struct.unpack_from("<I", prefix)[0]) > 0:
        prefix += f.read(min(4 * flag, length - _IR_SIZE))
    return prefix


def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
    """Split a payload into its IRHeader and the image bytes."""
    if len(payload) < _IR_SIZE:
        raise RecordIOError(f"payload of {len(payload)} bytes is shorter than an IRHeader")
    flag, label, id_, id2 = struct.unpack_from(_IR_FORMAT, payload)
    start = _IR_SIZE
    labels: tuple[float, ...] = (label,)
    if flag > 0:
        end = start + 4 * flag
        if len(payload) < end:
            raise RecordIOError(f"payload too short for its {flag} labels")
        labels = struct.unpack_from(f"<{flag}f", payload, start)
        start = end
    return IRHeader(flag, labels, id_, id2), payload[start:]


def pack(labels: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """An IRHeader (one label inline, or several after the header) followed by ``image``."""
    if isinstance(labels, (int, float)):
        return struct.pack(_IR_FORMAT, 0, float(labels), id, id2) + image
    head = struct.pack(_IR_FORMAT, len(labels), 0.0, id, id2)
    return head + struct.pack(f"<{len(labels)}f", *labels) + image


def write_recordio(rec_path: Path, records: Iterable[tuple[int, bytes]]) -> Path:
    """Write ``(index, payload)`` records to ``rec_path`` and its ``.idx``; returns the idx path."""
    idx_path = rec_path.with_suffix(".idx")
    lines = []
    with open(rec_path, "wb") as f:
        for index, payload in records:
            lines.append(f"{index}\t{f.tell()}\n")
            cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i : i + 4] == _MAGIC_BYTES]
            starts, ends = [0] + [c + 4 for c in cuts], cuts + [len(payload)]
            for n, (a, b) in enumerate(zip(starts, ends)):
                cflag = 0 if not cuts else 1 if n == 0 else 3 if n == len(cuts) else 2
                f.write(struct.pack("<II", MAGIC, (cflag << 29) | (b - a)) + payload[a:b])
                f.write(b"\0" * ((4 - (b - a) % 4) % 4))
    idx_path.write_text("".join(lines))
    return idx_path


@dataclass
class ImageRecord:
    """One image record as listed: its label (class id) or why it cannot be used."""

    index: int
    offset: int
    label: float | None
    error: str = ""


class RecordIOReader:
    """Random access to a ``.rec`` through its ``.idx``; picklable (the file opens lazily)."""

    def __init__(self, rec_path: Path, idx_path: Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self._file: BinaryIO | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}

    def _handle(self) -> BinaryIO:
        if self._file is None:
            self._file = open(self.rec_path, "rb")
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, offset: int) -> bytes:
        """The full payload (IRHeader included) of the record at ``offset``."""
        return read_record(self._handle(), offset)

    def read_image(self, offset: int) -> bytes:
        """The image bytes of the record at ``offset``."""
        return unpack(self.read(offset))[1]

    def images(self) -> Iterator[ImageRecord]:
        """Every image record in index order (the insightface header and range records skipped)."""
        pairs = read_index(self.idx_path)
        if not pairs:
            return
        stop = None
        index0, offset0 = pairs[0]
        if index0 == 0:
            try:
                header, _ = unpack(read_head(self._handle(), offset0))
            except RecordIOError:
                header = None
            if header is not None and header.flag > 0:
                stop = int(header.labels[0])
                pairs = pairs[1:]
        for index, offset in pairs:
            if stop is not None and index >= stop:
                break
            try:
                header, _ = unpack(read_head(self._handle(), offset))
            except RecordIOError as exc:
                yield ImageRecord(index, offset, None, f"bad_record: {exc}")
                continue
            yield ImageRecord(index, offset, float(header.labels[0]))
