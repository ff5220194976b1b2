"""The trainable models and their shipped configs (no heavy imports: the CLI's ``--help`` reads it).

Every model has a paper-setup config and a tiny one (CPU, ``--base tiny``). ``--config tiny`` and
``--config paper`` name those two for whichever model is trained; a shipped config of another
model is refused with the list of the right ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class ModelEntry:
    """One ``pipeline train <name>`` model."""

    paper: str  # shipped config with the paper's setup (the default)
    tiny: str  # shipped config for a few CPU steps on tiny models
    needs_base: bool  # whether it runs on a Stable Diffusion (``--base``)
    summary: str


MODELS: dict[str, ModelEntry] = {
    "dense-face": ModelEntry("dense_face", "tiny", True, "Dense-Face: pose branch, identity MLP, PC-adapter, annotation head"),
    "portraitbooth": ModelEntry("portraitbooth", "portraitbooth_tiny", True, "PortraitBooth: UNet + subject MLP"),
    "msid": ModelEntry("msid", "msid_tiny", False, "Face2Diffusion's multi-scale identity encoder (ViT, ArcFace per depth)"),
    "face2diffusion": ModelEntry("face2diffusion", "face2diffusion_tiny", True,
                                 "Face2Diffusion: mapping networks (MSID + expression -> S*), CGDR loss"),
    "sefi-ide": ModelEntry("sefi_ide", "sefi_ide_tiny", True,
                           "SeFi-IDE: per-stage (K, V) identity tokens for one face (--key / --identity)"),
}
ALIASES = ("paper", "tiny")


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def owner(config: str) -> str | None:
    """The model a shipped config belongs to, None for a name no model ships."""
    for name, entry in MODELS.items():
        if config in (entry.paper, entry.tiny):
            return name
    return None


def check_model(model: str) -> ModelEntry:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
    return MODELS[model]


def resolve_config(model: str, config: str | Path | None) -> str | Path:
    """The config path or shipped name to load for ``model``: None/``paper`` -> its paper config,
    ``tiny`` -> its tiny config, another model's shipped config -> an error naming the right ones."""
    entry = check_model(model)
    if config is None or str(config) == "paper":
        return entry.paper
    if str(config) == "tiny":
        return entry.tiny
    if Path(config).is_file():
        return config
    other = owner(str(config))
    if other is not None and other != model:
        raise ValueError(f"config {config!r} is for {other}; configs for {model}: {entry.paper} (paper), "
                         f"{entry.tiny} (tiny)")
    return config


def describe() -> str:
    """One line per model: name, shipped configs, what it trains."""
    lines = []
    for name, e in MODELS.items():
        base = "" if e.needs_base else "  (no --base)"
        lines.append(f"{name:<15} configs: {e.paper} (paper, default), {e.tiny} (tiny){base}  -- {e.summary}")
    others = [c for c in shipped_configs() if owner(c) is None]
    if others:
        lines.append(f"{'other configs':<15} {', '.join(others)}  (pass with --config NAME)")
    return "\n".join(lines)
