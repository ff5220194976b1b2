"""PortraitBooth (Sec. 4): Stable Diffusion 1.5 whose UNet and subject MLP are trained; VAE, text
encoder and the face-recognition network stay frozen.

* subject text-embedding augmentation (Eq. 4): the caption's subject word ("man", "woman", ...) is
  the identity token; its conditioning vector becomes MLP([text embedding || face feature of the
  reference]). The face feature is, as in the paper, the frozen recogniser's shallow features of
  the reference face (``shallow``: the end of its first 56x56 stage, average-pooled to 4x4, 1024-d),
  or its deep embedding (``id_net``), or the shards' identity embedding (``embedding``);
* dynamic identity preservation (Eq. 5-6): for t <= R_t, z0 is estimated in one step, decoded,
  the target's face aligned (detect's five points) and embedded by the frozen recogniser;
  L_id = 1 - cos(reference embedding, estimate embedding), the reference embedded by the same net;
* emotion-aware cross-attention control (Eq. 7): the identity and expression tokens' cross-attention
  maps in every UNet cross-attention layer are pulled into the face mask and truncated at beta/gamma
  (wherever the caption has the token, text-only samples included).
Per sample: ``p_uncond`` unconditional (empty caption), ``p_text_only`` text only (no augmentation,
no L_id), and independently ``p_face_loss`` with the noise loss restricted to the face mask.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from training.dense_face import DTYPES, OptimConfig, identity_positions
from training.portraitbooth_blocks import (FACE_SIZE, AttentionRecorder, FaceEmbedder, SubjectMLP, align_faces,
                                           identity_loss, install_recorder, localization_term)
from training.module_base import TrainableParts
from training.prompts import SOURCE_NONE
from training.sd import SDComponents

TRAINABLE = ("unet", "subject_mlp")
FACE_FEATURES = ("embedding", "id_net", "shallow")
ID_REFERENCES = ("id_net", "embedding")


@dataclass
class PortraitBoothConfig:
    """Model and loss settings (``model:`` in the YAML)."""

    face_feature: str = "shallow"  # shallow (paper) | id_net (its deep embedding) | embedding (shards' id.npy)
    shallow_layer: str = ""  # id_net submodule of the shallow feature; "": SHALLOW_LAYERS of its family
    shallow_grid: int = 4  # shallow feature maps are average-pooled to grid x grid
    id_net: str = ""  # frozen recogniser of the features and L_id (registry name); "": the embedder
    id_net_weights: str = "pretrained"  # pretrained | random (tests)
    id_reference: str = "id_net"  # L_id's reference: id_net on the reference face | embedding (id.npy)
    embedder: str = ""  # the identity stage's model that wrote id.npy; "": read from the shards
    id_dim: int = 0  # id.npy size; 0: read from the shards
    mlp_hidden: int = 1024
    r_t: int = 250  # L_id only for t <= r_t
    id_weight: float = 1.0
    loc_lambda: float = 0.001  # identity-token weight of Eq. 7
    loc_mu: float = 0.01  # expression-token weight
    loc_beta: float = 0.8  # identity-token truncation
    loc_gamma: float = 0.1  # expression-token truncation
    p_text_only: float = 0.1
    p_uncond: float = 0.1
    p_face_loss: float = 0.5
    frozen_dtype: str = "fp32"  # VAE and text encoder weights
    gradient_checkpointing: bool = False
    weights_dir: str = ""  # registry weights directory for id_net ("" : the default)
    seed: int = 0


@dataclass
class Draw:
    """The random choices of one step: latents, noise, timesteps and per-sample modes."""

    latents: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    uncond: torch.Tensor
    text_only: torch.Tensor
    face_loss: torch.Tensor


@dataclass
class Pass:
    """One UNet pass: prediction, its target, the recorded attention maps and who got augmented."""

    noisy: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    positions: torch.Tensor  # (B, 2) identity and expression token index, -1 none
    augmented: torch.Tensor  # (B,) identity token replaced by the subject MLP
    maps: list[torch.Tensor]  # per cross-attention layer (B, 2, h, w)


def recogniser_of(embedder: str) -> str:
    """The shards' identity model when it is a registered face recogniser, else MobileFaceNet (bundled):
    conditioning and L_id then use the network that embedded the dataset."""
    from stages.models import registry

    try:
        if registry.get(embedder).family in ("arcface", "mobilefacenet"):
            return embedder
    except (KeyError, ValueError):
        pass
    return "mobilefacenet"


class PortraitBooth(TrainableParts):
    """PortraitBooth on SD components; checkpoints hold the UNet and the subject MLP only."""

    trainable_parts = TRAINABLE

    def __init__(self, sd: SDComponents, cfg: PortraitBoothConfig, optim: OptimConfig | None = None):
        super().__init__()
        if cfg.face_feature not in FACE_FEATURES or cfg.id_reference not in ID_REFERENCES:
            raise ValueError(f"face_feature must be one of {FACE_FEATURES}, id_reference one of {ID_REFERENCES}")
        if "embedding" in (cfg.face_feature, cfg.id_reference) and cfg.id_dim <= 0:
            raise ValueError("id_dim must be set (the identity embedding size of the shards)")
        if not 0 <= cfg.p_uncond + cfg.p_text_only <= 1:
            raise ValueError("p_uncond + p_text_only must be within [0, 1]")
        self.cfg, self.optim = cfg, optim or OptimConfig(lr=1e-5, scheduler="constant", warmup_steps=0)
        self.strict_loading = False  # checkpoints leave the frozen weights out
        torch.manual_seed(cfg.seed)
        self.unet, self.vae, self.text_encoder = sd.unet.float(), sd.vae, sd.text_encoder
        for m in (self.vae, self.text_encoder):
            m.requires_grad_(False).eval()
            if m.dtype != DTYPES[cfg.frozen_dtype]:
                m.to(DTYPES[cfg.frozen_dtype])
        self.tokenizer, self.scheduler = sd.tokenizer, sd.scheduler
        self.n_text = min(sd.tokenizer.model_max_length, sd.text_encoder.config.max_position_embeddings)
        cfg.id_net = cfg.id_net or recogniser_of(cfg.embedder)  # stored resolved: inference reads it
        self.id_net = FaceEmbedder(cfg.id_net, cfg.id_net_weights, cfg.weights_dir or None)
        probe = torch.zeros(1, 3, FACE_SIZE, FACE_SIZE)
        with torch.no_grad():
            net_dim = self.id_net(probe).shape[1]
            shallow_dim = self.id_net.shallow(probe, cfg.shallow_layer, cfg.shallow_grid).shape[1] \
                if cfg.face_feature == "shallow" else 0
        if cfg.id_reference == "embedding" and cfg.id_dim != net_dim:
            raise ValueError(f"id_reference=embedding needs id.npy from {cfg.id_net} ({net_dim}-d), got {cfg.id_dim}-d")
        face_dim = {"embedding": cfg.id_dim, "id_net": net_dim, "shallow": shallow_dim}[cfg.face_feature]
        self.subject_mlp = SubjectMLP(self.unet.config.cross_attention_dim, face_dim, cfg.mlp_hidden)
        self.recorder = AttentionRecorder()
        self.n_cross = install_recorder(self.unet, self.recorder)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()  # the L_id decode at 512^2 backpropagates through it

    def train(self, mode: bool = True) -> "PortraitBooth":
        super().train(mode)
        for m in (self.vae, self.text_encoder, self.id_net):
            m.eval()
        return self

    # -- building blocks shared by training and inference ---------------------------------------

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode, differentiable (the identity loss needs the gradient)."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()

    @torch.no_grad()
    def encode_text(self, captions: list[str], id_spans: torch.Tensor, emotion_spans: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen text context (B, L, D) and (B, 2) token positions of the identity and expression words."""
        tok = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.n_text,
                             return_offsets_mapping=True, return_tensors="pt")
        hidden = self.text_encoder(tok.input_ids.to(self.device))[0]
        pos = torch.stack([identity_positions(tok.offset_mapping, id_spans.cpu()),
                           identity_positions(tok.offset_mapping, emotion_spans.cpu())], 1)
        return hidden, pos.to(self.device)

    @torch.no_grad()
    def face_features(self, ref_embedding: torch.Tensor | None, ref_face: torch.Tensor | None) -> torch.Tensor:
        """phi(f) of Eq. 4 for the configured feature source."""
        if self.cfg.face_feature == "embedding":
            return ref_embedding.float()
        if self.cfg.face_feature == "id_net":
            return self.id_net(ref_face)
        return self.id_net.shallow(ref_face, self.cfg.shallow_layer, self.cfg.shallow_grid)

    def condition(self, text: torch.Tensor, id_pos: torch.Tensor, face: torch.Tensor,
                  augment: torch.Tensor) -> torch.Tensor:
        """Eq. 4: the identity token's vector replaced by the subject MLP's where ``augment``."""
        rows = torch.arange(len(text), device=text.device)
        token = text[rows, id_pos.clamp(min=0)]
        new = self.subject_mlp(token, face.to(text.device))
        use = augment & (id_pos >= 0)
        slot = (torch.arange(text.shape[1], device=text.device)[None] == id_pos[:, None]) & use[:, None]
        return torch.where(slot[..., None], new[:, None], text.float())

    def denoise(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The UNet's prediction, and the cross-attention maps of ``positions`` (B, K) when given."""
        self.recorder.set(positions, tuple(noisy.shape[-2:]))
        self.recorder.active = positions is not None
        try:
            pred = self.unet(noisy.to(self.unet.dtype), t, encoder_hidden_states=context.to(self.unet.dtype)).sample
        finally:
            self.recorder.active = False
        return pred.float(), self.recorder.take()

    def estimate_z0(self, noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Eq. 5: the one-step clean-latent estimate (epsilon or v prediction)."""
        abar = self.scheduler.alphas_cumprod.to(noisy.device)[t].float().view(-1, 1, 1, 1)
        if self.scheduler.config.prediction_type == "v_prediction":
            return abar.sqrt() * noisy - (1 - abar).sqrt() * pred
        return (noisy - (1 - abar).sqrt() * pred) / abar.sqrt()

    # -- training ----------------------------------------------------------------------------------

    def draw_modes(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample (unconditional, text only, face-region noise loss), mutually exclusive first two."""
        u = torch.rand(n, generator=generator)
        uncond = u < self.cfg.p_uncond
        text_only = ~uncond & (u < self.cfg.p_uncond + self.cfg.p_text_only)
        face = torch.rand(n, generator=generator) < self.cfg.p_face_loss
        return uncond.to(self.device), text_only.to(self.device), face.to(self.device)


    def draw(self, batch: dict, batch_idx: int) -> Draw:
        gen = self._generator(batch_idx)
        latents = self.encode_images(batch["image"], gen)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(latents),), generator=gen)
        return Draw(latents, noise, t.to(self.device), *self.draw_modes(len(latents), gen))

    def forward_pass(self, batch: dict, d: Draw) -> Pass:
        """Condition on the (possibly dropped) caption and reference, predict, record attention."""
        n = len(d.latents)
        captions = ["" if u else c for c, u in zip(batch["caption"], d.uncond.tolist())]
        none = torch.full((n, 2), -1, dtype=torch.long)
        id_spans = torch.where(d.uncond.cpu()[:, None], none, batch["id_span"].cpu())
        emo_spans = torch.where(d.uncond.cpu()[:, None], none, batch.get("emotion_span", none).cpu())
        text, positions = self.encode_text(captions, id_spans, emo_spans)
        augmented = ~d.uncond & ~d.text_only & (positions[:, 0] >= 0)
        face = self.face_features(batch.get("ref_embedding"), batch.get("ref_face"))
        context = self.condition(text, positions[:, 0], face, augmented)
        noisy = self.scheduler.add_noise(d.latents, d.noise, d.t)
        pred, maps = self.denoise(noisy, d.t, context, positions)
        target = d.noise if self.scheduler.config.prediction_type == "epsilon" \
            else self.scheduler.get_velocity(d.latents, d.noise, d.t)
        return Pass(noisy, pred, target, positions, augmented, maps)

    def noise_loss(self, batch: dict, out: Pass, d: Draw) -> torch.Tensor:
        """Eq. 1, over the face mask only for the samples drawn for it (and with a non-empty mask)."""
        err = (out.pred - out.target) ** 2
        m = F.interpolate(batch["face_mask"].float().to(err.device), size=err.shape[-2:], mode="area")
        area = m.sum((1, 2, 3)) * err.shape[1]
        region = (err * m).sum((1, 2, 3)) / area.clamp_min(1e-6)
        per = torch.where(d.face_loss & (area > 0), region, err.mean((1, 2, 3)))
        return per.mean()

    @torch.no_grad()
    def reference_embedding(self, batch: dict) -> torch.Tensor:
        if self.cfg.id_reference == "embedding":
            return F.normalize(batch["ref_embedding"].float(), dim=1)
        return self.id_net(batch["ref_face"])

    def identity_term(self, batch: dict, out: Pass, d: Draw) -> torch.Tensor:
        """Eq. 5-6 for the augmented samples with t <= R_t and known face points, 0 for the rest."""
        points = batch["points5"].to(out.pred.device)
        sel = out.augmented & (d.t <= self.cfg.r_t) & torch.isfinite(points).flatten(1).all(1)
        if not sel.any():
            return out.pred.new_zeros(())
        z0 = self.estimate_z0(out.noisy[sel], out.pred[sel], d.t[sel])
        faces = align_faces(self.decode_latents(z0), points[sel])
        per = identity_loss(self.reference_embedding(batch)[sel], self.id_net(faces))
        return per.sum() / len(sel)

    def localization_loss(self, batch: dict, out: Pass) -> torch.Tensor:
        """Eq. 7 per sample (a term only where its token exists), averaged over the batch."""
        if not out.maps:
            return out.pred.new_zeros(())
        c, mask = self.cfg, batch["face_mask"].to(out.pred.device)
        ident = localization_term([m[:, 0] for m in out.maps], mask, c.loc_beta)
        expr = localization_term([m[:, 1] for m in out.maps], mask, c.loc_gamma)
        has = (out.positions >= 0).float()
        return (c.loc_lambda * ident * has[:, 0] + c.loc_mu * expr * has[:, 1]).mean()

    def training_step(self, batch: dict, batch_idx: int, draw: Draw | None = None) -> dict:
        d = draw or self.draw(batch, batch_idx)
        out = self.forward_pass(batch, d)
        terms = {
            "noise": self.noise_loss(batch, out, d),  # L_noise
            "id": self.cfg.id_weight * self.identity_term(batch, out, d),  # L_id, t <= R_t
            "loc": self.localization_loss(batch, out),  # L_loc
        }
        loss = terms["noise"] + terms["id"] + terms["loc"]  # Eq. 8
        n = len(d.latents)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=n)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        sources = batch.get("id_token_source")
        if sources:  # share of man/woman tokens (attributes' gender label or a gendered caption word)
            self.log("train/gendered_token", sum(s != SOURCE_NONE for s in sources) / len(sources), batch_size=n)
        return {"loss": loss, "terms": terms}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["portraitbooth"] = asdict(self.cfg)

