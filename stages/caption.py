"""caption: several captioner candidates per image, ranked by CLIP, top k kept, cleaned.

Every registered captioner in ``captioners`` (``stages/captioners.py``: BLIP base and large by
default) writes ``n_beam`` beam-search and ``n_sample`` nucleus-sampled captions per image.
Each candidate is cleaned (``stages/text.py``: tokenizer leftovers, "arafed", filler, repeats,
person names) and the cleaned text scored by CLIP cosine against the image. The best ``k``
distinct cleaned captions scoring at least ``min_score`` are kept, best first, with the span
of the word naming the person; all candidates, raw and cleaned, stay in the manifest.

Models load from local directories only (a copied snapshot, ``<weights dir>/<hf id>``, or the
Hugging Face cache) unless ``allow_download``; ``check()`` stops a run whose models are absent.
Provenance names every model location (with the snapshot commit for Hugging Face cache
snapshots) and hashes the sha256 of every weights file (cache blobs are named by theirs, so
only copied snapshots are read, once per process). Random weights are declared by a marker
file, ``captioners.RANDOM_MARKER``, in the model directory (tests/fixtures/tiny_hf.py and the
benchmark write it): such runs report ``weights_random=True``. Sampling is seeded from ``seed``
and the batch's keys: reruns of the same batches give the same captions.

When the ``attributes`` stage ran, each kept caption's emotion word is compared with its
emotion label (``schemas.attributes.caption_emotion_columns``; a label that is not
``emotion_confident`` counts as uncertain); ``emotion_word`` (on by default, PortraitBooth's
expression-aware prompts) inserts a confident label's word before the subject word of captions
naming no emotion.
"""
from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pyarrow as pa
import torch

import schemas.attributes as aschema
import schemas.caption as cs
from stages import captioners as caps
from stages import text
from stages.base import Provenance, Result, Sample
from stages.model_stage import DeviceStage
from stages.models import common

CLIP_DEFAULT = "openai/clip-vit-large-patch14"
CLIP_RESIDENT_MB = 1700.0
"""CLIP ViT-L/14's fp32 weights in memory, MB."""
TEXT_BATCH = 256


class ClipScorer:
    """Cosine similarity of images and texts under a CLIP model loaded from a local directory."""

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype):
        from transformers import AutoProcessor, CLIPModel

        self.device, self.dtype = device, dtype
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = CLIPModel.from_pretrained(str(path), local_files_only=True)
        self.model.eval().requires_grad_(False).to(device)
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)

    @staticmethod
    def _unit(out: Any) -> torch.Tensor:
        x = getattr(out, "pooler_output", out).float()  # transformers 5 returns an output object
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def image_features(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        pixels = self.processor.image_processor(images=list(images), return_tensors="pt", device=self.device)
        pixels = pixels["pixel_values"].to(self.device)
        with common.autocast(self.device, self.dtype):
            return self._unit(self.model.get_image_features(pixel_values=pixels))

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        parts = []
        for start in range(0, len(texts), TEXT_BATCH):
            tok = self.processor.tokenizer(list(texts[start:start + TEXT_BATCH]), padding=True,
                                           truncation=True, max_length=self.max_tokens, return_tensors="pt")
            tok = tok.to(self.device)
            with common.autocast(self.device, self.dtype):
                out = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            parts.append(self._unit(out))
        return torch.cat(parts)

    @torch.inference_mode()
    def score(self, images: Sequence[np.ndarray], texts: Sequence[Sequence[str]]) -> list[list[float | None]]:
        """Per image, the cosine of each of its texts; None for an empty text (nothing to score)."""
        unique = sorted({t for per_image in texts for t in per_image if t})
        if not unique:
            return [[None] * len(per_image) for per_image in texts]
        cosines = (self.image_features(images) @ self.text_features(unique).T).cpu().numpy()
        index = {t: j for j, t in enumerate(unique)}
        return [[float(cosines[i, index[t]]) if t else None for t in per_image]
                for i, per_image in enumerate(texts)]


def confident(attributes: dict | None) -> bool:
    """Whether an attributes row's emotion label may name the caption's expression: only where the
    stage marked it ``emotion_confident`` (a row without that column is not)."""
    return bool(attributes) and attributes.get("emotion_confident") is True


def select(cleaned: Sequence[str], scores: Sequence[float | None], k: int, min_score: float) -> list[int]:
    """Indices of the kept candidates: distinct non-empty scored texts (best score each),
    >= min_score, best first (ties: earlier candidate), at most k."""
    best: dict[str, int] = {}
    for i, (caption, score) in enumerate(zip(cleaned, scores)):
        if not caption or score is None or not math.isfinite(score):
            continue
        if caption not in best or score > scores[best[caption]]:
            best[caption] = i
    order = sorted(best.values(), key=lambda i: (-scores[i], i))
    return [i for i in order if scores[i] >= min_score][:k]


def caption_columns(raw: Sequence[str], cleaned: Sequence[str], scores: Sequence[float | None],
                    sources: Sequence[str], clip_model: str, k: int, min_score: float) -> dict[str, Any]:
    """The manifest columns of one image's candidates."""
    kept = select(cleaned, scores, k, min_score)
    subjects = [text.find_subject(cleaned[i]) for i in kept]
    return {
        "captions": [cleaned[i] for i in kept],
        "caption_scores": [float(scores[i]) for i in kept],
        "caption_raw": [raw[i] for i in kept],
        "subject_words": [word for word, _, _ in subjects],
        "subject_spans": [[start, end] for _, start, end in subjects],
        "candidates": list(cleaned),
        "candidate_raw": list(raw),
        "candidate_scores": [float(s) if s is not None and math.isfinite(s) else None for s in scores],
        "candidate_sources": list(sources),
        "clip_model": clip_model,
    }


@dataclass
class Caption(DeviceStage):
    name: ClassVar[str] = "caption"
    version: ClassVar[str] = "2"
    reads: ClassVar[tuple[str, ...]] = ()
    optional_reads: ClassVar[tuple[str, ...]] = ("attributes",)
    """Its emotion label, when attributes ran: agreement columns and ``emotion_word``."""
    schema: ClassVar = pa.schema([*cs.SCHEMA, *aschema.CAPTION_EMOTION_FIELDS])
    files: ClassVar[tuple[str, ...]] = ()
    gpus: ClassVar[float] = 0.5
    limits: ClassVar[dict] = {"n_beam": "[0, inf)", "n_sample": "[0, inf)", "top_p": "(0, 1]", "k": "[1, inf)",
                              "max_new_tokens": "[1, inf)", "min_score": "[-1, 1]"}

    captioners: list[str] = field(default_factory=lambda: ["blip_base", "blip_large"])
    """Registered captioner names (stages/captioners.py): blip_base, blip_large, git_base, git_large,
    blip2_opt_2_7b, blip2_flan_t5_xl."""
    model_paths: dict[str, str] = field(default_factory=dict)
    """Captioner name -> HF model id or local snapshot directory, overriding the registry default."""
    clip_model: str = CLIP_DEFAULT
    """Scoring CLIP: HF model id or local snapshot directory."""
    num_beams: int = 3
    """Beam width of beam search (at least n_beam)."""
    n_beam: int = 3
    """Beam-search captions kept per captioner and image (0 disables beam search)."""
    n_sample: int = 3
    """Nucleus-sampled captions per captioner and image (0 disables sampling)."""
    top_p: float = 0.9
    """Nucleus sampling probability mass."""
    seed: int = 0
    """Sampling seed (mixed with the batch's keys)."""
    prompt: str = ""
    """Text the captions start from, e.g. "a photograph of" (kept in the caption); "" for none."""
    max_new_tokens: int = 30
    """Longest caption in tokens."""
    k: int = 3
    """Captions kept per image, best CLIP score first."""
    min_score: float = 0.0
    """Lowest CLIP cosine a kept caption may have (ViT-L/14: matching captions score ~0.2-0.35)."""
    remove_names: bool = True
    """Replace person names (the names list, the sample's identity when it is a name, runs of
    capitalised words) by the caption's class word."""
    names: list[str] = field(default_factory=list)
    """Extra person names to remove ("_" reads as a space)."""
    emotion_word: bool = True
    """Insert the attributes emotion word ("a happy man") into kept captions that name no emotion,
    where the label is confident (``emotion_confident``; rows without that column are not); needs
    attributes in the run, scores stay those of the caption before the insertion."""
    allow_download: bool = False
    """Let missing models download from the Hugging Face hub; off: local files only (also tried:
    ``<weights_dir>/<hf id>``)."""
    dtype: str = "bf16"
    """bf16, fp16 or fp32 on GPU; the CPU always runs fp32."""
    batch_size: int = 64
    """Images per generate call (0: as many as fit in ~70% of free GPU memory)."""

    def locations(self) -> dict[str, str]:
        """Captioner name -> configured model location."""
        return {name: self.model_paths.get(name) or caps.get(name).default for name in self.captioners}

    def revision(self, name: str) -> str:
        """The registry's pinned hub revision of a captioner at its default location, else ""."""
        return "" if name in self.model_paths else caps.get(name).revision

    def check_config(self) -> None:
        if not self.captioners or len(set(self.captioners)) != len(self.captioners):
            raise ValueError(f"caption.captioners must list distinct names, got {self.captioners}")
        unknown = set(self.model_paths) - set(caps.CAPTIONERS)
        if unknown:
            raise ValueError(f"caption.model_paths names unknown captioners {sorted(unknown)}; "
                             f"known: {', '.join(sorted(caps.CAPTIONERS))}")
        if self.n_beam + self.n_sample == 0:
            raise ValueError("caption: n_beam and n_sample must not both be 0")
        if self.n_beam and self.num_beams < self.n_beam:
            raise ValueError(f"caption.num_beams ({self.num_beams}) must be >= n_beam ({self.n_beam})")
        self._dirs()

    def _dirs(self) -> dict[str, Path]:
        """Resolved local directories of the captioners and of CLIP (key ``""``); cached."""
        if getattr(self, "_resolved", None) is None:
            dirs = {name: caps.resolve_location(loc, f"caption captioner '{name}'", self.allow_download,
                                                self.weights_dir, self.revision(name))
                    for name, loc in self.locations().items()}
            dirs[""] = caps.resolve_location(self.clip_model, "caption clip_model", self.allow_download,
                                             self.weights_dir)
            self._resolved = dirs
        return self._resolved

    def setup(self) -> None:
        if not self.allow_download:
            caps.set_offline_env()
        super().setup()
        dirs = self._dirs()
        self._captioners = {}
        for name in self.captioners:
            captioner = caps.get(name).cls(num_beams=self.num_beams, top_p=self.top_p)
            captioner.load(dirs[name], self._device, self.load_dtype)
            self._captioners[name] = captioner
        self._scorer = ClipScorer(dirs[""], self._device, self.load_dtype)

    def resident_mb(self) -> float:
        return sum(caps.get(n).resident_mb for n in self.captioners) + CLIP_RESIDENT_MB

    def provenance(self) -> Provenance:
        if getattr(self, "_provenance", None) is None:
            dirs = self._dirs()
            labels = {**self.locations(), "": self.clip_model}
            described = {name or "clip": (labels[name], path) for name, path in dirs.items()}
            weights = ",".join(f"{n}={loc}" + (f"@{caps.revision_of(p)}" if caps.revision_of(p) else "")
                               for n, (loc, p) in described.items())
            lines = "".join(f"{n}:{caps.weights_sha256(p)}\n" for n, (_, p) in described.items())
            self._provenance = Provenance(
                model="+".join(self.captioners) + f"|clip={self.clip_model}", weights=weights,
                weights_sha256=hashlib.sha256(lines.encode()).hexdigest(),
                weights_random=any(caps.is_random(p) for p in dirs.values()))
        return self._provenance

    def _names(self, sample: Sample) -> list[str]:
        return [*self.names, *text.names_from_identity(sample.identity)] if self.remove_names else []

    def _generate(self, images: list[np.ndarray], keys: list[str]) -> tuple[list[list[str]], list[str]]:
        """Raw candidates per image and their sources, every captioner in config order."""
        raw: list[list[str]] = [[] for _ in images]
        sources: list[str] = []
        device = getattr(self, "_device", torch.device("cpu"))
        for name, captioner in self._captioners.items():
            seed = zlib.crc32("\n".join([name, *keys]).encode()) ^ self.seed
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                out = captioner.generate(images, self.n_beam, self.n_sample, self.prompt, self.max_new_tokens)
            if len(out) != len(images) or any(len(o) != self.n_beam + self.n_sample for o in out):
                raise RuntimeError(f"captioner '{name}' returned the wrong number of captions")
            for per_image, texts in zip(raw, out):
                per_image.extend(texts)
            sources += [f"{name}:{caps.BEAM}"] * self.n_beam + [f"{name}:{caps.SAMPLE}"] * self.n_sample
        return raw, sources

    def compute(self, batch: list[Sample]) -> list[Result]:
        images = [np.require(s.image, requirements=["C", "W"]) for s in batch]
        raw, sources = self._generate(images, [s.key for s in batch])
        cleaned = [[text.clean(r, self.remove_names, self._names(s)) for r in per_image]
                   for s, per_image in zip(batch, raw)]
        results = []
        for sample, r, c, score in zip(batch, raw, cleaned, self._scorer.score(images, cleaned)):
            cols = caption_columns(r, c, score, sources, self.clip_model, self.k, self.min_score)
            attrs = sample.upstream.get("attributes")
            label = attrs.columns.get("emotion") if attrs is not None else None
            if attrs is not None and attrs.columns.get("emotion_confident") is False:
                label = aschema.UNCERTAIN  # only confident labels name an emotion
            add = self.emotion_word and confident(attrs.columns if attrs is not None else None)
            cols["captions"], cols["subject_spans"], agreement = aschema.caption_emotion_columns(
                cols["captions"], cols["subject_spans"], label, add)
            results.append(Result(columns={**cols, **agreement}))
        return results
