"""Stream training shards with webdataset, each target paired with a reference of the same person.

Per epoch the shards are permuted (seeded), cut among (node, worker) units and read as tar
streams; samples without a usable reference are dropped; a shuffle buffer mixes the rest.
References come from ``training.pairs`` (their embedding, and optionally image or aligned face
crop, read by offset). Each batch also carries the prompt's identity-token and first expression-word
spans (``training.prompts``: confident emotion labels, man/woman tokens), the token's source and
detect's five face points.
The stream is endless and deterministic for a given seed, so a resumed run skips exactly the
batches it consumed before: whole epochs are skipped by count, the rest is replayed undecoded.
"""
from __future__ import annotations

import io
import itertools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from schemas.attributes import EMOTION_SYNONYMS
from schemas.parsing import FACE_MASK_IMAGE
from schemas.pose import POSE_IMAGE
from schemas.shard import IMAGE, MEMBERS, META, meta_section
from stages.models import align
from training.heatmaps import N_MESH
from training.pairs import EMBEDDING, PairConfig, PairIndex, load_index
from training.prompts import (EMOTION_VOCABULARIES, PERSON, SOURCE_NONE, confident_emotion, gender_token,
                              insert_before, label_prompt, names_emotion, prompt_word)

LANDMARKS, DEPTH, MASK = "lmk.npy", "depth.png", "mask.png"
assert {LANDMARKS, DEPTH, MASK, EMBEDDING, POSE_IMAGE, FACE_MASK_IMAGE} <= set(MEMBERS)
REQUIRED = (IMAGE, META, LANDMARKS, DEPTH, MASK)
OPTIONAL = (POSE_IMAGE, FACE_MASK_IMAGE)
NO_SPAN = (-1, -1)
EXPRESSION_WORDS: tuple[str, ...] = tuple(EMOTION_SYNONYMS)  # words naming a facial expression
REF_FACE_SIZE = 112  # the ArcFace-template crop face recognisers take


@dataclass
class DataConfig:
    """Streaming, captions and pairing."""

    batch_size: int = 12
    resolution: int = 512
    num_workers: int = 4
    shuffle_buffer: int = 1000
    prompt_dropout: float = 0.05
    identity_word: str = "face"
    fallback_caption: str = "a photo of a person"
    fallback_subject: str = "person"
    reference_image: bool = False
    reference_face: bool = False  # adds ref_face: the reference's 112 ArcFace-aligned face crop
    keep_subject: bool = False  # keep the caption's subject word (id_span points at it) instead of identity_word
    subject_token: str = "gendered"  # with keep_subject: gendered (man/woman from labels, else person) | caption
    emotion_word: bool = True  # insert the confident emotion label's word before the subject when none is named
    emotion_vocabulary: str = "paper"  # expression words: paper (PortraitBooth's 11) | synonyms (29, with neutral)
    label_prompts: bool = True  # caption-less samples with attributes: prompt from labels, not fallback_caption
    require_pose: bool = False
    seed: int = 0
    pairs: PairConfig = field(default_factory=PairConfig)


@dataclass(frozen=True)
class Prompt:
    """One training prompt, its identity token's [start, end) span and where the token came from."""

    text: str
    id_span: tuple[int, int]
    token_source: str = SOURCE_NONE  # prompts.SOURCE_*: attributes.gender_label | caption | none


def _check(cfg: DataConfig) -> None:
    if cfg.subject_token not in ("gendered", "caption") or cfg.emotion_vocabulary not in EMOTION_VOCABULARIES:
        raise ValueError(f"data.subject_token must be gendered|caption and data.emotion_vocabulary one of "
                         f"{sorted(EMOTION_VOCABULARIES)}, got {cfg.subject_token!r}, {cfg.emotion_vocabulary!r}")


def make_prompt(meta: dict, rng: random.Random, cfg: DataConfig) -> Prompt:
    """One kept caption (a prompt from the labels, or the fallback, without captions) with the
    confident emotion label's word inserted (``cfg.emotion_word``) and its subject word replaced by
    the identity token: ``cfg.identity_word``, or with ``cfg.keep_subject`` man/woman/person
    (``subject_token: gendered``) or the word as written (``caption``)."""
    _check(cfg)
    if rng.random() < cfg.prompt_dropout:
        return Prompt("", NO_SPAN)
    attrs = meta.get(meta_section("attributes")) or None
    emotion = confident_emotion(attrs) if cfg.emotion_word else None
    cap = meta.get("caption") or {}
    captions = cap.get("captions") or []
    if captions:
        i = rng.randrange(len(captions))
        text, spans = captions[i], cap.get("subject_spans") or []
        span = tuple(spans[i]) if i < len(spans) and spans[i] is not None else NO_SPAN
    elif attrs and cfg.label_prompts:
        token = gender_token(attrs) if cfg.keep_subject and cfg.subject_token == "gendered" else None
        word = token.word if token else (PERSON if cfg.keep_subject else cfg.identity_word)
        text, span = label_prompt(word, emotion, attrs, rng, cfg.emotion_vocabulary)
        return Prompt(text, span, token.source if token else SOURCE_NONE)
    else:
        text = cfg.fallback_caption
        m = re.search(rf"\b{re.escape(cfg.fallback_subject)}\b", text)
        span = (m.start(), m.end()) if m else NO_SPAN
    s, e = span
    if not 0 <= s < e <= len(text):
        return Prompt(text, NO_SPAN)
    if emotion and not names_emotion(text, cfg.emotion_vocabulary):
        text, (s, e) = insert_before(text, (s, e), prompt_word(emotion, cfg.emotion_vocabulary))
    if cfg.keep_subject and cfg.subject_token == "caption":
        return Prompt(text, (s, e), SOURCE_NONE)
    if cfg.keep_subject:
        token = gender_token(attrs, text[s:e])
        word, source = token.word, token.source
    else:
        word, source = cfg.identity_word, SOURCE_NONE
    return Prompt(text[:s] + word + text[e:], (s, s + len(word)), source)


def make_caption(meta: dict, rng: random.Random, cfg: DataConfig) -> tuple[str, tuple[int, int]]:
    """``make_prompt``'s text and identity-token span; (-1, -1) when it has none."""
    p = make_prompt(meta, rng, cfg)
    return p.text, p.id_span


def word_span(text: str, words: tuple[str, ...] = EXPRESSION_WORDS) -> tuple[int, int]:
    """[start, end) of the first whole word of ``text`` in ``words`` (any case), (-1, -1) without one."""
    wanted = {w.lower() for w in words}
    for m in re.finditer(r"[A-Za-z]+", text):
        if m.group().lower() in wanted:
            return m.start(), m.end()
    return NO_SPAN


def face_points(meta: dict) -> np.ndarray | None:
    """detect's five points in the shard image (the aligned crop), (5, 2); None without them."""
    points = (meta.get(meta_section("detect")) or {}).get("points5_crop")
    if points is None or len(points) != 10 or not np.all(np.isfinite(points)):
        return None
    return np.asarray(points, np.float32).reshape(5, 2)


def reference_face(image: np.ndarray, meta: dict) -> np.ndarray:
    """The reference's face aligned to the ArcFace template, as the identity stage crops it.

    Without detect's points the shard image is taken to be an aligned FFHQ-style crop.
    """
    points = face_points(meta)
    if points is None:
        points = align.ffhq_template(image.shape[1])
    face, _ = align.align(np.ascontiguousarray(image), points, align.ARCFACE_112, REF_FACE_SIZE)
    return face


def _imdecode(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ValueError("undecodable image member")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def _fit(image: np.ndarray, size: int, interp: int = cv2.INTER_AREA) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    src = image.astype(np.float32) if image.dtype == np.uint16 else image
    return cv2.resize(src, (size, size), interpolation=interp)


def _decode_image(data: bytes, size: int, flags: int = cv2.IMREAD_COLOR, interp: int = cv2.INTER_AREA) -> np.ndarray:
    return _fit(_imdecode(data, flags), size, interp)


def _rgb_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def decode_sample(raw: dict[str, Any], size: int, require_pose: bool = False) -> dict[str, Any]:
    """Shard members of one sample -> tensors at ``size`` x ``size`` (annotations follow the image)."""
    meta = json.loads(raw[META])
    frame = _imdecode(raw[IMAGE])
    h, w = frame.shape[:2]
    image = _fit(frame, size)
    lmk = np.load(io.BytesIO(raw[LANDMARKS])).astype(np.float32)[:N_MESH]
    lmk[:, 0] *= size / w
    lmk[:, 1] *= size / h
    lmk[:, 2] *= size / w
    depth = _decode_image(raw[DEPTH], size, cv2.IMREAD_UNCHANGED).astype(np.float32) / 65535.0
    mask = _decode_image(raw[MASK], size, cv2.IMREAD_UNCHANGED, cv2.INTER_NEAREST)
    if POSE_IMAGE in raw:
        pose = _rgb_tensor(_decode_image(raw[POSE_IMAGE], size))
    elif require_pose:
        raise KeyError(f"{meta['key']}: no {POSE_IMAGE}")
    else:
        pose = torch.zeros(3, size, size)
    if FACE_MASK_IMAGE in raw:
        face = _decode_image(raw[FACE_MASK_IMAGE], size, cv2.IMREAD_UNCHANGED, cv2.INTER_NEAREST) > 127
    else:
        face = mask > 0
    points = face_points(meta)
    points = np.full((5, 2), np.nan, np.float32) if points is None else points * np.float32([size / w, size / h])
    return {
        "key": meta["key"], "meta": meta,
        "image": _rgb_tensor(image) * 2.0 - 1.0,
        "pose": pose,
        "landmarks": torch.from_numpy(lmk),
        "depth": torch.from_numpy(depth)[None],
        "mask": torch.from_numpy(mask.astype(np.int64)),
        "face_mask": torch.from_numpy(face.astype(np.float32))[None],
        "points5": torch.from_numpy(points),  # detect's five points in pixels of the resized image, NaN unknown
    }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in samples[0].items():
        values = [s[name] for s in samples]
        out[name] = torch.stack(values) if isinstance(value, torch.Tensor) else values
    out["id_span"] = torch.tensor(out["id_span"], dtype=torch.long)
    if "emotion_span" in out:
        out["emotion_span"] = torch.tensor(out["emotion_span"], dtype=torch.long)
    return out


def worker_batches(consumed: int, worker: int, n_workers: int) -> int:
    """Batches worker ``worker`` delivered among the first ``consumed`` (the loader alternates)."""
    return consumed // n_workers + (1 if worker < consumed % n_workers else 0)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class PairedShardStream(IterableDataset):
    """Endless stream of collated batches of (target, reference) samples."""

    def __init__(self, index: PairIndex, cfg: DataConfig, start_batch: int = 0):
        self.index, self.cfg, self.start_batch = index, cfg, start_batch
        self.required = REQUIRED + ((POSE_IMAGE,) if cfg.require_pose else ())
        self.ref_required = (EMBEDDING,) + ((IMAGE,) if cfg.reference_image or cfg.reference_face else ()) \
            + ((META,) if cfg.reference_face else ())
        self.target_ok, self.ref_ok = index.usable(self.required, self.ref_required)
        self.rank, self.world = _rank_world()  # here, in the main process, where the process group lives
        self.shard_counts = np.bincount(index.shard_of[self.target_ok], minlength=len(index.shard_names))
        self.wanted = set(REQUIRED + OPTIONAL)

    def epoch_plan(self, epoch: int, unit: int, n_units: int) -> tuple[np.ndarray, int | None, int]:
        """(shards to read in order, sample stride or None, usable samples) of one unit's epoch."""
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.shard_counts))
        if len(order) >= n_units:
            mine = order[unit::n_units]
            return mine, None, int(self.shard_counts[mine].sum())
        # fewer shards than readers: every reader walks all shards and keeps every n-th sample
        total = int(self.shard_counts.sum())
        return order, n_units, max(0, (total - unit + n_units - 1) // n_units)

    def _epoch(self, epoch: int, unit: int, n_units: int) -> Iterator[dict]:
        shards, stride, _ = self.epoch_plan(epoch, unit, n_units)
        urls = [{"url": str(self.index.shards_dir / f"{self.index.shard_names[s]}.tar")} for s in shards]
        raw = wds.tarfile_samples(iter(urls), select_files=lambda f: f.partition(".")[2] in self.wanted)
        usable = (s for s in raw if self.target_ok[self.index.row(s["__key__"])])
        if stride is not None:
            usable = (s for i, s in enumerate(usable) if i % stride == unit)
        rng = random.Random(f"{self.cfg.seed}:{epoch}:{unit}")
        for sample in wds.shuffle(self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=rng)(usable):
            sample["__epoch__"] = epoch
            yield sample

    def _decode(self, raw: dict) -> dict[str, Any]:
        key = raw["__key__"]
        rng = random.Random(f"{self.cfg.seed}:{raw['__epoch__']}:{key}")
        sample = decode_sample(raw, self.cfg.resolution, self.cfg.require_pose)
        meta = sample.pop("meta")
        rows = [r for r in self.index.candidate_rows(self.index.row(key)) if self.ref_ok[r]]
        ref = int(rows[rng.randrange(len(rows))])
        sample["identity"] = (meta.get("source") or {}).get("identity", "")
        sample["ref_key"] = str(self.index.keys[ref])
        embedding = np.load(io.BytesIO(self.index.read(ref, EMBEDDING)))
        sample["ref_embedding"] = torch.from_numpy(embedding.astype(np.float32))
        if self.cfg.reference_image:
            ref_image = _decode_image(self.index.read(ref, IMAGE), self.cfg.resolution)
            sample["ref_image"] = _rgb_tensor(ref_image) * 2 - 1
        if self.cfg.reference_face:
            face = reference_face(_imdecode(self.index.read(ref, IMAGE)), json.loads(self.index.read(ref, META)))
            sample["ref_face"] = _rgb_tensor(face) * 2 - 1
        prompt = make_prompt(meta, rng, self.cfg)
        sample["caption"], sample["id_span"], sample["id_token_source"] = prompt.text, prompt.id_span, \
            prompt.token_source
        sample["emotion_span"] = word_span(sample["caption"], tuple(EMOTION_VOCABULARIES[self.cfg.emotion_vocabulary]))
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        unit, n_units = self.rank * n_workers + worker, self.world * n_workers
        skip = worker_batches(self.start_batch, worker, n_workers) * self.cfg.batch_size
        epoch, empty = 0, 0
        while True:  # whole epochs are skipped by count, without reading them
            count = self.epoch_plan(epoch, unit, n_units)[2]
            if skip < count:
                break
            skip, epoch, empty = skip - count, epoch + 1, empty + (count == 0)
            if empty > 100:
                raise RuntimeError(f"reader {unit} of {n_units} gets no usable samples: "
                                   "use more shards or fewer readers")
        samples = itertools.chain.from_iterable(self._epoch(e, unit, n_units) for e in itertools.count(epoch))
        decoded = map(self._decode, itertools.islice(samples, skip, None))
        while batch := list(itertools.islice(decoded, self.cfg.batch_size)):
            yield collate(batch)


class ResumableBatches(L.LightningDataModule):
    """A data module whose state is the number of training batches it handed out (``consumed``);
    a resumed run starts its stream there. Subclasses set ``self.consumed = 0`` and ``self.cfg``."""

    consumed: int

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.training:
            self.consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"consumed_batches": self.consumed, "seed": self.cfg.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = int(state.get("consumed_batches", 0))


class FaceShardDataModule(ResumableBatches):
    """Shards of one pipeline output -> endless paired batches; its state is the batches consumed."""

    def __init__(self, shards: str | Path, cfg: DataConfig | None = None):
        super().__init__()
        self.shards, self.cfg = Path(shards), cfg or DataConfig()
        _check(self.cfg)  # a bad prompt setting fails here, not inside a loader worker
        self.index: PairIndex | None = None
        self.consumed = 0

    def prepare_data(self) -> None:
        load_index(self.shards, self.cfg.pairs)

    def setup(self, stage: str | None = None) -> None:
        if self.index is None:
            self.index = load_index(self.shards, self.cfg.pairs)

    def stream(self) -> PairedShardStream:
        self.setup()
        return PairedShardStream(self.index, self.cfg, start_batch=self.consumed)

    def train_dataloader(self) -> DataLoader:
        stream = self.stream()
        if not stream.target_ok.any():
            raise RuntimeError(f"no usable sample in {self.shards}: a target needs members {stream.required} and "
                               f"a same-identity reference with {stream.ref_required}; pairing: {self.index.stats}")
        # no cv2.setNumThreads in the workers: it blocks in a child forked from a process whose
        # OpenCV pool was busy (e.g. the pipeline ran in-process); torch already uses 1 thread there
        return DataLoader(stream, batch_size=None, num_workers=self.cfg.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)

