"""Face2Diffusion's multi-scale identity (MSID) encoder (Sec. 3.2, Eq. 3), pre-trained on the shards.

A ViT over 112x112 ArcFace-aligned faces whose class token, taken after several depths (the
paper: layers {3, 6, 9, 12} of 12), goes through BatchNorm + LayerNorm into one feature per
depth; an additive angular margin (ArcFace) loss on every depth makes shallow features
discriminate identities too. The concatenated features are v_id.

Data: every shard sample with an image is a face of its identity label (single-image identities
included); ``holdout_identities`` identities with 2+ images are kept out of training, and at the
end the same/different AUC per depth on them is reported (``run_summary``). The stream is endless
and deterministic per seed, so a resumed run starts at exactly the batch it stopped at.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from schemas.shard import IMAGE, META
from training.data import ResumableBatches, _imdecode, _rank_world, _rgb_tensor, reference_face
from training.dense_face import OptimConfig
from training.module_base import TrainableParts
from training.pairs import PairConfig, PairIndex, load_index


@dataclass
class MSIDConfig:
    """Encoder and loss (``model:`` in the YAML)."""

    image_size: int = 112  # ArcFace-aligned face side
    patch_size: int = 8
    embed_dim: int = 384
    depth: int = 12  # transformer blocks
    heads: int = 12
    mlp_ratio: float = 4.0
    depths: list[int] = field(default_factory=lambda: [3, 6, 9, 12])  # 1-based blocks whose class token is a feature
    margin: float = 0.5  # ArcFace m (radians)
    scale: float = 64.0  # ArcFace s
    seed: int = 0


@dataclass
class MSIDDataConfig:
    """Faces and the held-out split (``data:`` in the YAML)."""

    batch_size: int = 1024
    num_workers: int = 8
    holdout_identities: int = 50  # identities with 2+ images kept out of training for the AUC
    holdout_max_samples: int = 2000
    hflip: bool = True  # random horizontal flip (per sample, from the seed)
    seed: int = 0


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class MSIDEncoder(nn.Module):
    """(B, 3, 112, 112) faces in [-1, 1] -> per-depth features [(B, D)] (``features``) or v_id (B, D x depths)."""

    def __init__(self, cfg: MSIDConfig):
        super().__init__()
        if not cfg.depths or min(cfg.depths) < 1 or max(cfg.depths) > cfg.depth:
            raise ValueError(f"depths must lie in 1..{cfg.depth}, got {cfg.depths}")
        self.cfg = cfg
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, cfg.embed_dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norms = nn.ModuleDict({str(d): nn.Sequential(nn.BatchNorm1d(cfg.embed_dim), nn.LayerNorm(cfg.embed_dim))
                                    for d in cfg.depths})

    @property
    def out_dim(self) -> int:
        return self.cfg.embed_dim * len(self.cfg.depths)

    def features(self, faces: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch(faces).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        out = []
        for i, block in enumerate(self.blocks, 1):
            x = block(x)
            if str(i) in self.norms:
                out.append(self.norms[str(i)](x[:, 0]))
        return out

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.features(faces), 1)


class ArcMargin(nn.Module):
    """Additive angular margin softmax (ArcFace): -log softmax of s cos(theta + m) at the label."""

    def __init__(self, dim: int, classes: int, margin: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.margin, self.scale = margin, scale

    def forward(self, feature: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(feature.float()), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + self.margin)
        logits = cos.scatter(1, labels[:, None], target) * self.scale
        return F.cross_entropy(logits, labels)


def pair_auc(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Same/different-identity ROC AUC of cosine similarity over all pairs (Mann-Whitney U)."""
    f = F.normalize(features.float(), dim=1)
    sim = f @ f.T
    i, j = torch.triu_indices(len(f), len(f), 1)
    scores, same = sim[i, j].numpy(), (labels[i] == labels[j]).numpy()
    pos, neg = scores[same], scores[~same]
    if not len(pos) or not len(neg):
        return float("nan")
    _, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties share their mean rank
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def split_identities(index: PairIndex, cfg: MSIDDataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(training rows, held-out rows, training identities in class order)."""
    usable = index.has(IMAGE) & index.has(META)
    idents, counts = np.unique(index.identity[usable], return_counts=True)
    multi = idents[counts >= 2]
    order = np.random.default_rng(cfg.seed).permutation(len(multi))
    held = set(multi[order[: min(cfg.holdout_identities, max(len(multi) - 1, 0))]].tolist())
    held_mask = usable & np.isin(index.identity, list(held))
    train = np.flatnonzero(usable & ~held_mask)
    classes = sorted(set(index.identity[train].tolist()))
    if not len(train):
        raise RuntimeError(f"no training faces in {index.shards_dir} after holding out {len(held)} identities")
    return train, np.flatnonzero(held_mask)[: cfg.holdout_max_samples], classes


def load_face(index: PairIndex, row: int, flip: bool = False) -> torch.Tensor:
    """The row's face aligned to the ArcFace template, (3, 112, 112) in [-1, 1]."""
    face = reference_face(_imdecode(index.read(row, IMAGE)), json.loads(index.read(row, META)))
    if flip:
        face = face[:, ::-1]
    return _rgb_tensor(face) * 2 - 1


class FaceStream(IterableDataset):
    """Endless seeded epochs of (face, class) batches over the training rows, from batch ``start_batch``.

    Sample p of the stream is row perm_e[p % N] of epoch e = p // N, so any batch can be built
    directly: loader workers and ranks take turns by batch (the loader returns them in order).
    """

    def __init__(self, index: PairIndex, rows: np.ndarray, labels: np.ndarray, cfg: MSIDDataConfig,
                 start_batch: int = 0):
        self.index, self.rows, self.labels, self.cfg, self.start = index, rows, labels, cfg, start_batch
        self.rank, self.world = _rank_world()  # here, in the main process, where the process group lives
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None

    def item(self, p: int) -> tuple[int, int, bool]:
        epoch, i = divmod(p, len(self.rows))
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.cfg.seed, epoch])
            self._epoch = (epoch, rng.permutation(len(self.rows)), rng.random(len(self.rows)) < 0.5)
        _, perm, flips = self._epoch
        j = int(perm[i])
        return int(self.rows[j]), int(self.labels[j]), bool(flips[i] and self.cfg.hflip)

    def global_batch(self, local: int, n_workers: int) -> int:
        """The stream batch that this rank's ``local``-th loader batch is."""
        return (local // n_workers) * self.world * n_workers + self.rank * n_workers + local % n_workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        b = self.cfg.batch_size
        for local in itertools.count(self.start):
            if local % n_workers != worker:
                continue
            g = self.global_batch(local, n_workers)
            chunk = [self.item(p) for p in range(g * b, (g + 1) * b)]
            yield {"face": torch.stack([load_face(self.index, r, f) for r, _, f in chunk]),
                   "label": torch.tensor([c for _, c, _ in chunk])}


class MSIDDataModule(ResumableBatches):
    """Faces of the shards by identity; its state is the batches consumed."""

    def __init__(self, shards: str | Path, cfg: MSIDDataConfig):
        super().__init__()
        self.shards, self.cfg, self.consumed = Path(shards), cfg, 0
        self.index = load_index(self.shards, PairConfig())
        self.train_rows, self.held_rows, self.classes = split_identities(self.index, cfg)
        position = {c: i for i, c in enumerate(self.classes)}
        self.train_labels = np.array([position[i] for i in self.index.identity[self.train_rows]])

    def train_dataloader(self) -> DataLoader:
        stream = FaceStream(self.index, self.train_rows, self.train_labels, self.cfg, self.consumed)
        return DataLoader(stream, batch_size=None, num_workers=self.cfg.num_workers)

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        faces = torch.stack([load_face(self.index, int(r)) for r in self.held_rows]) if len(self.held_rows) \
            else torch.zeros(0, 3, 112, 112)
        names = {n: i for i, n in enumerate(sorted(set(self.index.identity[self.held_rows].tolist())))}
        return faces, torch.tensor([names[n] for n in self.index.identity[self.held_rows]], dtype=torch.long)



class MSID(TrainableParts):
    """MSID pre-training: the encoder and one margin classifier per depth (all trainable)."""

    trainable_parts = ("encoder", "margins")

    def __init__(self, cfg: MSIDConfig, classes: int, optim: OptimConfig | None = None,
                 held_out: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.cfg, self.optim = cfg, optim or OptimConfig(lr=1e-3, weight_decay=0.1)
        torch.manual_seed(cfg.seed)
        self.encoder = MSIDEncoder(cfg)
        self.margins = nn.ModuleList(ArcMargin(cfg.embed_dim, classes, cfg.margin, cfg.scale) for _ in cfg.depths)
        self.held_out, self.auc = held_out, {}

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        feats = self.encoder.features(batch["face"])
        terms = {f"depth{d}": head(f, batch["label"]) for d, f, head in zip(self.cfg.depths, feats, self.margins)}
        loss = torch.stack(list(terms.values())).mean()  # Eq. 3 at every depth, averaged
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(batch["label"]))
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch["label"]))
        return {"loss": loss, "terms": terms}

    @torch.no_grad()
    def depth_auc(self, faces: torch.Tensor, labels: torch.Tensor, chunk: int = 256) -> dict[str, float]:
        """Same/different AUC of each depth's feature and of v_id (``all``) on ``faces``."""
        was = self.encoder.training
        self.encoder.eval()
        feats = [torch.cat(f) for f in zip(*(self.encoder.features(faces[i:i + chunk].to(self.device))
                                              for i in range(0, len(faces), chunk)))]
        self.encoder.train(was)
        out = {f"depth{d}": pair_auc(f.cpu(), labels) for d, f in zip(self.cfg.depths, feats)}
        out["all"] = pair_auc(torch.cat(feats, 1).cpu(), labels)
        return out

    def on_train_end(self) -> None:
        if self.held_out is not None and len(self.held_out[0]):
            self.auc = self.depth_auc(*self.held_out)

    def run_summary(self) -> dict[str, Any]:
        return {"held_out_auc": self.auc, "held_out_samples": 0 if self.held_out is None else len(self.held_out[1])}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["msid"] = asdict(self.cfg)


def load_encoder(checkpoint: str | Path) -> MSIDEncoder:
    """The encoder of an ``msid`` training checkpoint, in eval mode."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "msid" not in ckpt:
        raise ValueError(f"{checkpoint} is not an msid checkpoint (no 'msid' config in it)")
    enc = MSIDEncoder(MSIDConfig(**ckpt["msid"]))
    enc.load_state_dict({k.removeprefix("encoder."): v for k, v in ckpt["state_dict"].items()
                         if k.startswith("encoder.")})
    return enc.eval()


def build(cfg: dict, shards: Path) -> tuple[MSID, MSIDDataModule]:
    from training.train import make

    model_cfg = make(MSIDConfig, cfg.get("model"), "model")
    optim = make(OptimConfig, cfg.get("optim"), "optim")
    dm = MSIDDataModule(shards, make(MSIDDataConfig, cfg.get("data"), "data"))
    return MSID(model_cfg, len(dm.classes), optim, dm.held_out()), dm
