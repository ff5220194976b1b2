"""detail_caption: a vision-language model's short caption and facial-detail paragraph per face.

Any chat VLM that transformers loads with ``AutoModelForImageTextToText`` and whose processor
has a chat template works (default Qwen2-VL-2B-Instruct; LLaVA-1.5 and Qwen2.5-VL load the same
way). Each frame is area-resized to ``image_size`` (the aligned crop is square) and asked two
prompts, greedily decoded in batches with left padding: ``short_prompt`` (a caption for
diffusion training, cut to ``max_words``) and ``detail_prompt`` (one sentence per facial
feature). Person names are removed as in the caption stage; the paragraph's sentences are
tagged with face regions and parsing classes (``stages/regions.py``, columns in
``schemas/detail_caption.py``).

The model loads from local files only (a snapshot directory or an HF id in the cache or
``<weights_dir>/<id>``) unless ``allow_download``, exactly as the caption stage's models; on a
GPU its weights are cast to ``dtype`` (bf16 by default), on the CPU it runs fp32. A model
directory holding the random-weights marker is reported as random in provenance.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import cv2
import numpy as np
import torch

import schemas.detail_caption as ds
from stages import captioners as caps
from stages import regions, text
from stages.base import Provenance, Result, Sample
from stages.model_stage import DeviceStage

MODEL_DEFAULT = "Qwen/Qwen2-VL-2B-Instruct"
SHORT_PROMPT = (
    "Write one caption of at most 60 words for this face photo, for training an image generator. "
    "Mention apparent age, gender presentation, expression, hair, facial hair, glasses or other "
    "accessories, lighting and background. Do not name the person.")
DETAIL_PROMPT = (
    "Describe this person's face in detail, one sentence per feature: eyes, eyebrows, nose, mouth and "
    "lips, skin, hair, facial hair, ears, chin and jaw, cheeks, forehead. Describe only what is visible. "
    "Do not name the person.")
_HEADING = re.compile(r"(?m)^(\s*(?:[-*\u2022]+|\d+[.)])?\s*\**)([A-Z][A-Za-z' -]{0,40}?)(\**\s*:)")


def limit_words(caption: str, max_words: int) -> tuple[str, bool]:
    """At most ``max_words`` words: cut at the last sentence end inside the limit, else mid-sentence."""
    words = caption.split()
    if len(words) <= max_words:
        return caption, False
    head = " ".join(words[:max_words])
    end = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
    if head[-1:] in ".!?":
        return head, True
    return (head[:end + 1], True) if end > 0 else (head.rstrip(",;:-") + ".", True)


class ChatVLM:
    """A transformers image-text-to-text model with its processor, loaded from a local directory."""

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device, self.dtype = device, dtype
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        self.processor.tokenizer.padding_side = "left"  # generation continues from the right end
        self.model = AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        self.model.eval().requires_grad_(False).to(device)

    def prompt_text(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def generate(self, images: Sequence[np.ndarray], prompt: str, max_new_tokens: int,
                 repetition_penalty: float) -> list[str]:
        """One greedy answer per image to the same prompt."""
        inputs = self.processor(text=[self.prompt_text(prompt)] * len(images), images=list(images),
                                padding=True, return_tensors="pt").to(self.device)
        inputs = {k: v.to(self.dtype) if torch.is_floating_point(v) else v for k, v in inputs.items()}
        pad = self.processor.tokenizer.pad_token_id
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  repetition_penalty=repetition_penalty,
                                  **({"pad_token_id": pad} if pad is not None else {}))
        answers = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [a.strip() for a in answers]


@dataclass
class DetailCaption(DeviceStage):
    name: ClassVar[str] = "detail_caption"
    version: ClassVar[str] = "1"
    reads: ClassVar[tuple[str, ...]] = ()
    schema: ClassVar = ds.SCHEMA
    gpus: ClassVar[float] = 0.5
    limits: ClassVar[dict] = {"max_words": "[1, inf)", "max_new_tokens_short": "[1, inf)",
                              "max_new_tokens_detail": "[1, inf)", "repetition_penalty": "[1, 2]",
                              "image_size": "[28, 2048]"}

    model: str = MODEL_DEFAULT
    """The VLM: HF model id or local snapshot directory (AutoModelForImageTextToText)."""
    short_prompt: str = SHORT_PROMPT
    """Prompt of the short caption."""
    detail_prompt: str = DETAIL_PROMPT
    """Prompt of the facial-detail paragraph."""
    max_words: int = 70
    """Longest short caption in words (diffusion text encoders see ~77 tokens)."""
    max_new_tokens_short: int = 100
    """Token budget of the short caption."""
    max_new_tokens_detail: int = 320
    """Token budget of the detail paragraph."""
    repetition_penalty: float = 1.05
    """Greedy decoding's penalty on repeated tokens (1: none)."""
    image_size: int = 448
    """Side the frame is area-resized to before the processor (Qwen2-VL: 448 px = 256 tokens)."""
    remove_names: bool = True
    """Replace person names (identity, ``names``, capitalised runs) by the class word."""
    names: list[str] = field(default_factory=list)
    """Extra person names to remove."""
    allow_download: bool = False
    """Let a missing model download from the Hugging Face hub; off: local files only (also tried:
    ``<weights_dir>/<hf id>``)."""
    dtype: str = "bf16"
    """Weights dtype on GPU: bf16, fp16 or fp32 (the CPU always runs fp32)."""
    batch_size: int = 16
    """Images per generate call (0: as many as fit in ~70% of free GPU memory)."""

    def check_config(self) -> None:
        if not self.short_prompt.strip() or not self.detail_prompt.strip():
            raise ValueError("detail_caption: short_prompt and detail_prompt must not be empty")
        self._dir()

    def _dir(self) -> Path:
        if getattr(self, "_path", None) is None:
            self._path = caps.resolve_location(self.model, "detail_caption model", self.allow_download,
                                               self.weights_dir)
        return self._path

    def setup(self) -> None:
        if not self.allow_download:
            caps.set_offline_env()
        super().setup()
        self._vlm = ChatVLM(self._dir(), self._device, self.load_dtype)

    def resident_mb(self) -> float:
        return 9000.0  # Qwen2-VL-2B in fp32; BLIP-2-sized models take ~16 GB

    def provenance(self) -> Provenance:
        path = self._dir()
        revision = caps.revision_of(path)
        return Provenance(model=f"vlm={self.model}", weights=self.model + (f"@{revision}" if revision else ""),
                          weights_sha256=caps.weights_sha256(path), weights_random=caps.is_random(path))

    def _clean(self, raw: str, names: list[str]) -> str:
        cleaned = re.sub(r"[ \t]+", " ", text.strip_tokens(raw)).strip()
        if not self.remove_names:
            return cleaned
        # list headings ("**Facial Hair:**") would read as capitalised names: lowercase them first
        cleaned = _HEADING.sub(lambda m: m.group(1) + m.group(2).lower() + m.group(3), cleaned)
        return text.remove_person_names(cleaned, names)

    def _view(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        scale = self.image_size / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        return cv2.resize(np.ascontiguousarray(image), size, interpolation=interp)

    def columns(self, short_raw: str, detail_raw: str, names: list[str]) -> dict[str, Any]:
        """The manifest columns of one image's two answers."""
        short, truncated = limit_words(" ".join(self._clean(short_raw, names).split()), self.max_words)
        detail = self._clean(detail_raw, names)
        sentences, tags, parsing = regions.tag_paragraph(detail)
        return {"short_caption": short, "short_caption_raw": short_raw, "short_truncated": truncated,
                "detail": detail, "detail_raw": detail_raw, "detail_sentences": sentences,
                "detail_regions": tags, "detail_parsing": parsing, "vlm_model": self.model}

    def compute(self, batch: list[Sample]) -> list[Result]:
        views = [self._view(s.image) for s in batch]
        shorts = self._vlm.generate(views, self.short_prompt, self.max_new_tokens_short, self.repetition_penalty)
        details = self._vlm.generate(views, self.detail_prompt, self.max_new_tokens_detail, self.repetition_penalty)
        results = []
        for sample, short, detail in zip(batch, shorts, details):
            names = [*self.names, *text.names_from_identity(sample.identity)] if self.remove_names else []
            results.append(Result(columns=self.columns(short, detail, names)))
        return results
