"""RecordIO (insightface train.rec/train.idx) read in plain Python, through the casia source."""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import pytest

from pipeline.core.imaging import decode_rgb
from pipeline.sources import open_source
from pipeline.sources.recordio import (
    MAGIC,
    RecordIOError,
    RecordIOReader,
    pack,
    read_index,
    unpack,
    write_recordio,
)

LFW = Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw10"


@pytest.fixture
def images() -> list[tuple[int, bytes]]:
    """Five real photos of two people: (class id, JPEG bytes)."""
    if not LFW.is_dir():
        pytest.skip(f"real face photos not found at {LFW}")
    people = [("Colin_Powell", 0, (1, 2, 3)), ("Tony_Blair", 1, (1, 2))]
    return [
        (label, (LFW / name / f"{name}_000{i}.jpg").read_bytes())
        for name, label, numbers in people
        for i in numbers
    ]


def write_insightface(folder: Path, images: list[tuple[int, bytes]]) -> Path:
    """The insightface layout: header record 0, image records 1..n, then identity ranges."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(images)
    classes = sorted({label for label, _ in images})
    records = [(0, pack([n + 1, n + 1 + len(classes)], b""))]
    records += [(i, pack(label, data, id=i)) for i, (label, data) in enumerate(images, 1)]
    records += [(n + 1 + c, pack([1.0, 2.0], b"")) for c in classes]
    write_recordio(folder / "train.rec", records)
    return folder / "train.rec"


@pytest.mark.parametrize("sub", ["", "faces_webface_112x112"])
def test_casia_recordio(tmp_path: Path, images: list[tuple[int, bytes]], sub: str) -> None:
    rec = write_insightface(tmp_path / sub, images)
    assert rec.with_suffix(".idx").is_file()
    source = open_source("casia-webface", tmp_path)
    assert source.layout == "recordio" and source.describe()["layout"] == "recordio"
    entries = list(source.list())
    prefix = f"{sub}/train.rec#" if sub else "train.rec#"
    assert [(e.key, e.identity, e.error) for e in entries] == [
        ("0000000_0000001", "0000000", ""),
        ("0000000_0000002", "0000000", ""),
        ("0000000_0000003", "0000000", ""),
        ("0000001_0000004", "0000001", ""),
        ("0000001_0000005", "0000001", ""),
    ]
    assert all(e.location.startswith(prefix) for e in entries)
    assert [e.meta["record_index"] for e in entries] == [1, 2, 3, 4, 5]
    for entry, (_, data) in zip(entries, images):
        assert source.read(entry.location) == data
    assert decode_rgb(source.read(entries[0].location))[0].shape == (250, 250, 3)
    clone = pickle.loads(pickle.dumps(source))  # after a read: the open file must not travel
    assert clone.read(entries[4].location) == images[4][1]


def test_multipart_records_round_trip(tmp_path: Path) -> None:
    magic = struct.pack("<I", MAGIC)
    image = b"abcd" + magic + b"efgh" + magic + magic + b"tail!"  # magic at aligned spots
    rec = write_insightface(tmp_path, [(3, image), (3, b"plain")])
    with open(rec, "rb") as f:
        f.seek(read_index(rec.with_suffix(".idx"))[1][1])
        assert struct.unpack("<II", f.read(8))[1] >> 29 == 1  # first of several parts
    source = open_source("casia-webface", tmp_path)
    entries = list(source.list())
    assert [e.key for e in entries] == ["0000003_0000001", "0000003_0000002"]
    assert source.read(entries[0].location) == image
    assert source.read(entries[1].location) == b"plain"


def test_labels_and_bad_records(tmp_path: Path) -> None:
    records = [
        (0, pack(7.0, b"img0")),  # no header record: every record is an image
        (1, pack([12.0, 0.0], b"img1")),  # labels after the header: the first is the class
        (2, pack(-1.0, b"img2")),
        (3, pack(2.5, b"img3")),
    ]
    rec = write_recordio(tmp_path / "train.rec", records).with_suffix(".rec")
    size = rec.stat().st_size
    with open(rec.with_suffix(".idx"), "a") as f:
        f.write(f"4\t{size + 100}\n5\t2\n")  # past the end; not a record start
    source = open_source("casia-webface", tmp_path)
    entries = {e.meta["record_index"]: e for e in source.list()}
    first = entries[0]
    assert (first.key, first.identity, first.error) == ("0000007_0000000", "0000007", "")
    assert entries[1].identity == "0000012" and source.read(entries[1].location) == b"img1"
    assert entries[2].error == "bad_label: -1.0" and entries[3].error == "bad_label: 2.5"
    assert entries[4].error.startswith("bad_record:") and entries[5].error.startswith("bad_record:")
    assert len({e.key for e in entries.values()}) == 6
    with pytest.raises(ValueError):
        source.read(entries[4].location)


def test_read_rejects_foreign_locations(tmp_path: Path) -> None:
    write_recordio(tmp_path / "train.rec", [(0, pack(1.0, b"x"))])
    source = open_source("casia-webface", tmp_path)
    for bad in ("train.rec", "other.rec#0", "../train.rec#0", "train.rec#-1", "train.rec#x"):
        with pytest.raises(ValueError):
            source.read(bad)


def test_missing_idx_and_bad_idx(tmp_path: Path) -> None:
    (tmp_path / "train.rec").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="train.idx"):
        open_source("casia-webface", tmp_path)
    (tmp_path / "train.idx").write_text("0\t0\nnot a line\n")
    with pytest.raises(RecordIOError, match=":2:"):
        list(open_source("casia-webface", tmp_path).list())


def test_reader_and_unpack(tmp_path: Path) -> None:
    write_recordio(tmp_path / "a.rec", [(9, pack([4.0, 5.0, 6.0], b"jpeg", id=3, id2=4))])
    reader = RecordIOReader(tmp_path / "a.rec")
    (record,) = reader.images()
    assert (record.index, record.offset, record.label, record.error) == (9, 0, 4.0, "")
    header, image = unpack(reader.read(0))
    assert (header.flag, header.labels, header.id, header.id2) == (3, (4.0, 5.0, 6.0), 3, 4)
    assert image == b"jpeg"
    reader.close()
    with pytest.raises(RecordIOError):
        unpack(b"short")
