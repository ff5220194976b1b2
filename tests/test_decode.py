"""Batched JPEG decoding through torchvision (nvJPEG on CUDA) agrees with the PIL path."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.core import imaging
from tests.conftest import lfw_people


def _photos():
    return [p.read_bytes() for _, photos in lfw_people(2, 3) for p in photos]


def test_batched_decode_matches_pil_on_cpu():
    datas = _photos()
    batched = imaging.decode_jpeg_batch(datas, device="cpu")
    for data, image in zip(datas, batched):
        ref, _, _ = imaging.decode_rgb(data, 40_000_000, 16)
        assert image is not None and image.shape == ref.shape and image.dtype == np.uint8
        assert np.abs(image.astype(int) - ref.astype(int)).mean() < 1.0


def test_a_broken_file_sends_the_batch_back_to_pil():
    datas = _photos()[:2]
    assert imaging.decode_jpeg_batch([datas[0][:200], datas[1]], device="cpu") == [None, None]
    assert imaging.decode_jpeg_batch([b"not a jpeg", datas[1]], device="cpu") == [None, None]


@pytest.mark.gpu
def test_batched_decode_on_cuda_matches_pil():
    datas = _photos()
    batched = imaging.decode_jpeg_batch(datas, device="cuda")
    for data, image in zip(datas, batched):
        ref, _, _ = imaging.decode_rgb(data, 40_000_000, 16)
        assert image is not None and np.abs(image.astype(int) - ref.astype(int)).mean() < 2.0
