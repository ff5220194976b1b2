"""Pluggable image captioners for the caption stage, and where their Hugging Face weights live.

A captioner is a small class registered under a name (``blip_base``, ``blip_large``,
``git_base``, ``blip2_opt_2_7b``, ...) with a default model location (and, for the hub, a pinned
revision). ``load(path, device, dtype)`` loads it from a
local directory; ``generate(images, n_beam, n_sample, prompt, max_new_tokens)`` returns, per
image, ``n_beam`` beam-search captions followed by ``n_sample`` nucleus-sampled ones, raw
(decoded without special tokens, artifacts left in). BLIP-2 with OPT-2.7b or FlanT5-XL (the
captioners Dense-Face ranks beside BLIP) is registered too; another family is one ``register()``
call away and the stage never changes.

Model locations are a local directory (a copied snapshot) or a Hugging Face model id, resolved
in the local cache only unless downloads are allowed. A directory holding ``RANDOM_MARKER``
has random weights (the test fixtures write it) and is reported as such in provenance.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from stages.models import common

RANDOM_MARKER = "FACEWEAVE_RANDOM_WEIGHTS"
"""File name whose presence in a model directory marks its weights as random (tests, benchmarks)."""
BEAM, SAMPLE = "beam", "sample"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class Captioner:
    """Base class for Hugging Face image-to-text models driven by ``generate``."""

    def __init__(self, num_beams: int = 3, top_p: float = 0.9):
        self.num_beams, self.top_p = num_beams, top_p
        self.model: Any = None
        self.processor: Any = None

    def _model_class(self) -> Any:
        raise NotImplementedError

    def load(self, path: str | Path, device: torch.device, dtype: torch.dtype) -> None:
        """Load model and processor from a local directory (never the network)."""
        from transformers import AutoProcessor

        self.device, self.dtype = device, dtype
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        # weights stay fp32; bf16/fp16 runs under autocast (see stages.models.common)
        self.model = self._model_class().from_pretrained(str(path), local_files_only=True)
        self.model.eval().requires_grad_(False).to(device)

    def pixel_values(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Preprocessed batch on the model's device (resize and normalise there on GPU)."""
        out = self.processor.image_processor(images=list(images), return_tensors="pt", device=self.device)
        return out["pixel_values"].to(self.device)

    def prompt_ids(self, prompt: str, batch: int) -> torch.Tensor | None:
        return None

    def encode(self, pixels: torch.Tensor) -> Any:
        """What one image batch's generate calls share (the pixels; BLIP: the image embeddings)."""
        return pixels

    def search_kwargs(self, n: int, sample: bool, max_new_tokens: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_return_sequences=n)
        if sample:
            kwargs.update(do_sample=True, top_p=self.top_p, top_k=0, num_beams=1)
        else:
            kwargs.update(do_sample=False, num_beams=max(self.num_beams, n))
        return kwargs

    def _run(self, encoded: Any, ids: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.Tensor:
        if ids is not None:
            kwargs["input_ids"] = ids
        return self.model.generate(pixel_values=encoded, **kwargs)

    @torch.inference_mode()
    def generate(self, images: Sequence[np.ndarray], n_beam: int, n_sample: int, prompt: str = "",
                 max_new_tokens: int = 30) -> list[list[str]]:
        """Per image: ``n_beam`` beam captions then ``n_sample`` sampled captions (raw text)."""
        ids = self.prompt_ids(prompt, len(images)) if prompt else None
        per_image: list[list[str]] = [[] for _ in images]
        with common.autocast(self.device, self.dtype):
            encoded = self.encode(self.pixel_values(images))
        for n, sample in ((n_beam, False), (n_sample, True)):
            if n <= 0:
                continue
            with common.autocast(self.device, self.dtype):
                out = self._run(encoded, ids, self.search_kwargs(n, sample, max_new_tokens))
            texts = self.processor.tokenizer.batch_decode(out, skip_special_tokens=True)
            for i in range(len(images)):  # generate returns the n sequences of an image together
                per_image[i].extend(t.strip() for t in texts[i * n:(i + 1) * n])
        return per_image


class BlipCaptioner(Captioner):
    """BLIP captioning (BlipForConditionalGeneration); the prompt is kept in the caption.

    Does what ``BlipForConditionalGeneration.generate`` does, but runs the vision encoder once
    for both the beam and the sampling pass.
    """

    def _model_class(self) -> Any:
        from transformers import BlipForConditionalGeneration

        return BlipForConditionalGeneration

    def prompt_ids(self, prompt: str, batch: int) -> torch.Tensor:
        # [CLS] prompt [SEP] -> [bos] prompt: the decoder starts from its bos token, no [SEP]
        ids = self.processor.tokenizer(prompt, return_tensors="pt")["input_ids"][:, :-1].clone()
        ids[:, 0] = self.model.config.text_config.bos_token_id
        return ids.repeat(batch, 1).to(self.device)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixels)[0]

    def _run(self, encoded: torch.Tensor, ids: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.Tensor:
        text = self.model.config.text_config
        if ids is None:
            ids = torch.full((encoded.shape[0], 1), text.bos_token_id, dtype=torch.long, device=encoded.device)
        mask = torch.ones(encoded.shape[:-1], dtype=torch.long, device=encoded.device)
        return self.model.text_decoder.generate(
            input_ids=ids, eos_token_id=text.sep_token_id, pad_token_id=text.pad_token_id,
            encoder_hidden_states=encoded, encoder_attention_mask=mask, **kwargs)


class GitCaptioner(Captioner):
    """GIT captioning (GitForCausalLM); the prompt is kept in the caption."""

    def _model_class(self) -> Any:
        from transformers import GitForCausalLM

        return GitForCausalLM

    def prompt_ids(self, prompt: str, batch: int) -> torch.Tensor:
        tok = self.processor.tokenizer
        ids = [tok.cls_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
        return torch.tensor([ids], device=self.device).repeat(batch, 1)


class Blip2Captioner(Captioner):
    """BLIP-2 (Blip2ForConditionalGeneration): a frozen ViT-g, the Q-Former's query tokens projected
    into OPT or FlanT5. A prompt follows the query tokens; a decoder-only model (OPT) returns it in
    the caption, an encoder-decoder one (T5) does not.
    """

    def _model_class(self) -> Any:
        from transformers import Blip2ForConditionalGeneration

        return Blip2ForConditionalGeneration

    def load(self, path: str | Path, device: torch.device, dtype: torch.dtype) -> None:
        """Like ``Captioner.load``, but on GPU the weights are held in the run's dtype: at ~3.9 B
        parameters fp32 would take ~15 GiB per model (bf16: ~7.5)."""
        from transformers import AutoProcessor

        self.device, self.dtype = device, dtype
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        held = dtype if device.type == "cuda" else torch.float32
        self.model = self._model_class().from_pretrained(str(path), local_files_only=True, dtype=held)
        self.model.eval().requires_grad_(False).to(device)

    def pixel_values(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return super().pixel_values(images).to(self.model.dtype)

    def prompt_ids(self, prompt: str, batch: int) -> torch.Tensor:
        # what Blip2Processor builds: num_query_tokens image placeholders, then the tokenized prompt
        cfg = self.model.config
        text = self.processor.tokenizer(prompt, return_tensors="pt")["input_ids"]
        image = torch.full((1, cfg.num_query_tokens), cfg.image_token_index, dtype=text.dtype)
        return torch.cat([image, text], 1).repeat(batch, 1).to(self.device)


@dataclass(frozen=True)
class CaptionerSpec:
    """A registered captioner: its class and default model location."""

    name: str
    cls: type[Captioner]
    default: str
    """Hugging Face model id or local directory used when the stage's model_paths has no entry."""
    revision: str = ""
    """Hub commit the default id resolves to ("" : the newest); model_paths entries are used as given."""
    resident_mb: float = 2000.0
    """fp32 weights in memory, MB (the process executor's worker count)."""


CAPTIONERS: dict[str, CaptionerSpec] = {}


def register(name: str, cls: type[Captioner], default: str, revision: str = "",
             resident_mb: float = 2000.0) -> CaptionerSpec:
    """Add a captioner under ``name`` (plugins and tests may re-register their own names)."""
    spec = CaptionerSpec(name, cls, default, revision, resident_mb)
    CAPTIONERS[name] = spec
    return spec


def get(name: str) -> CaptionerSpec:
    try:
        return CAPTIONERS[name]
    except KeyError:
        raise ValueError(f"unknown captioner '{name}'; known: {', '.join(sorted(CAPTIONERS))}") from None


register("blip_base", BlipCaptioner, "Salesforce/blip-image-captioning-base", resident_mb=1000)
register("blip_large", BlipCaptioner, "Salesforce/blip-image-captioning-large", resident_mb=1900)
register("git_base", GitCaptioner, "microsoft/git-base-coco", resident_mb=700)
register("git_large", GitCaptioner, "microsoft/git-large-coco", resident_mb=1600)
# Dense-Face (Sec. 3.4) ranks BLIP-2 OPT and FlanT5 captions beside BLIP's; ~3.9 B parameters each
# (fp32 weights ~15 GiB, run under bf16 autocast on GPU)
register("blip2_opt_2_7b", Blip2Captioner, "Salesforce/blip2-opt-2.7b",
         revision="51572668da0eb669e01a189dc22abe6088589a24", resident_mb=16000)
register("blip2_flan_t5_xl", Blip2Captioner, "Salesforce/blip2-flan-t5-xl",
         revision="0eb0d3b46c14c1f8c7680bca2693baafdb90bb28", resident_mb=16000)


def set_offline_env() -> None:
    """Make Hugging Face libraries imported after this fail fast instead of reaching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _weight_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return safetensors or files  # from_pretrained prefers safetensors when both are present


def _check_model_dir(path: Path, what: str) -> Path:
    if not (path / "config.json").is_file() or not _weight_files(path):
        raise FileNotFoundError(f"{what}: {path} is not a complete model directory "
                                f"(needs config.json and *.safetensors or *.bin weights)")
    return path


def resolve_location(location: str, what: str, allow_download: bool = False,
                     weights_dir: str | os.PathLike | None = None, revision: str = "") -> Path:
    """Local directory of a model given as a directory or an HF id; FileNotFoundError if absent.

    An id is looked up as ``<weights dir>/<id>`` first (a copied snapshot), then in the Hugging
    Face cache at ``revision`` ("" : the newest cached), downloading only when ``allow_download``.
    """
    path = Path(location).expanduser()
    if path.is_dir():
        return _check_model_dir(path, what)
    if not _REPO_ID.match(location):
        raise FileNotFoundError(f"{what}: model directory {path} not found")
    from stages.models import registry

    copied = registry.weights_dir(weights_dir) / location
    if copied.is_dir():
        return _check_model_dir(copied, what)
    if not allow_download:
        set_offline_env()
    from huggingface_hub import snapshot_download

    pin = {"revision": revision} if revision else {}
    try:
        snapshot = Path(snapshot_download(location, local_files_only=not allow_download,
                                          allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"], **pin))
        if allow_download and not _weight_files(snapshot):
            snapshot = Path(snapshot_download(location, allow_patterns=["*.bin"], **pin))
    except Exception as exc:  # hub errors vary by version: offline, gated, not cached, ...
        at, flag = (f" at revision {revision}", f" --revision {revision}") if revision else ("", "")
        raise FileNotFoundError(
            f"{what}: model '{location}'{at} is not available offline ({type(exc).__name__}). Download it "
            f"where internet exists (`hf download {location}{flag}`) and either keep the Hugging Face cache "
            f"(HF_HOME) or copy the snapshot folder to {copied} or any directory given in the stage's "
            f"model_paths / clip_model; or set allow_download: true."
        ) from None
    return _check_model_dir(snapshot, what)


def revision_of(path: Path) -> str:
    """The commit of a Hugging Face cache snapshot directory, '' for other directories."""
    if path.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", path.name):
        return path.name
    return ""


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a weights file; an HF cache blob's name already is its sha256 (LFS files)."""
    real = path.resolve()
    if re.fullmatch(r"[0-9a-f]{64}", real.name) and real.parent.name == "blobs":
        return real.name
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        from stages.models.registry import sha256_of

        _HASHES[key] = sha256_of(real)
    return _HASHES[key]


def weights_sha256(path: Path) -> str:
    """sha256 over the per-file sha256 of a model directory's weight files (name:sha lines)."""
    lines = "".join(f"{p.name}:{file_sha256(p)}\n" for p in _weight_files(path))
    return hashlib.sha256(lines.encode()).hexdigest()


def is_random(path: Path) -> bool:
    return (path / RANDOM_MARKER).exists()
