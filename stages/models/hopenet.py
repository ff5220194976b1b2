"""Head-pose nets with 66-bin yaw/pitch/roll heads: Hopenet ResNet50 and a lightweight net.

Hopenet (Ruiz et al. 2018) is a torchvision-style ResNet50 with three 66-way classifiers over
3-degree bins. Two checkpoint layouts load strictly into ``HopenetR50``:

- deep-head-pose ``hopenet_robust_alpha1.pkl``: plain state dict, with the extra ``fc_finetune``
  layer (``Linear(2051, 3)``), unused at inference but kept so that no key is dropped;
- facexlib ``headpose_hopenet.pth``: ``{'params': state_dict}`` without ``fc_finetune``.

``LightweightHeadPose`` matches Shaw-git/Lightweight-Head-Pose-Estimation's ``model-b66.pkl``
(bundled): a conv stem and seven inverted-residual blocks with grouped 1x1 expansions.
Angles: ``sum(softmax(logits) * bin_index) * 3 + offset`` degrees; Hopenet's offset is -99, the
lightweight net's -97.5 (its training binned -99..99 into 66 bins and decodes to bin centres; on
mirrored real faces its yaw pairs are symmetric about 0 with -97.5, not with -99).

``hub=True`` downloads a missing checkpoint from its registered URL into torch.hub's cache.
deep-head-pose ships no ``hubconf.py``, so ``torch.hub.load`` itself cannot build Hopenet; the
architecture always comes from here.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stages.models import common, registry
from stages.models.registry import WeightsSpec
from stages.models.resnet import Bottleneck, ResNet50Trunk

NUM_BINS = 66
HOPENET_DHP = "hopenet_robust_alpha1"
HOPENET_FACEXLIB = "headpose_hopenet"
LIGHTWEIGHT = "lightweight_headpose_b66"
_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
_HOPENET_INPUT = "224x224 RGB face crop (deep-head-pose: resize 224 + centre crop), ImageNet mean/std"

registry.register(WeightsSpec(
    name=HOPENET_DHP,
    family="hopenet",
    filename="hopenet_robust_alpha1.pkl",
    sha256="",  # not published upstream; fill in after a trusted download
    urls=("https://drive.google.com/open?id=1m25PrSE7g9D2q2XJVMR6IA7RaCvWSzCR",),
    license="Apache-2.0 (natanielruiz/deep-head-pose)",
    input=_HOPENET_INPUT,
    extra={"arch": "hopenet_r50", "bin_offset": -99.0, "layout": "plain state dict + fc_finetune",
           "readme": "https://github.com/natanielruiz/deep-head-pose (300W-LP, alpha 1, robust)"},
))
registry.register(WeightsSpec(
    name=HOPENET_FACEXLIB,
    family="hopenet",
    filename="headpose_hopenet.pth",
    sha256="",  # not published upstream; fill in after a trusted download
    urls=("https://github.com/xinntao/facexlib/releases/download/v0.2.0/headpose_hopenet.pth",),
    license="MIT (xinntao/facexlib)",
    input=_HOPENET_INPUT,
    extra={"arch": "hopenet_r50", "bin_offset": -99.0, "layout": "{'params': state dict}"},
))
registry.register(WeightsSpec(
    name=LIGHTWEIGHT,
    family="hopenet",
    filename="lightweight_headpose_b66.pkl",
    sha256="0398c6d13983bc9820dd60fcd00c2e8b655e7a78d4cd7572fa6b4a42b9064879",
    size=877453,
    urls=("https://github.com/Shaw-git/Lightweight-Head-Pose-Estimation/raw/HEAD/models/model-b66.pkl",),
    license="MIT (Shaw-git/Lightweight-Head-Pose-Estimation; bundled/LICENSE.lightweight_headpose.MIT)",
    input="224x224 RGB face crop (face box x1.5, square), ImageNet mean/std",
    bundled=True,
    extra={"arch": "lightweight", "bin_offset": -97.5, "layout": "plain state dict",
           "source": "bundled; sha256 as in the shared weights README; upstream name model-b66.pkl"},
))


class HopenetR50(ResNet50Trunk):
    """ResNet50 trunk (Bottleneck, [3, 4, 6, 3]) with yaw/pitch/roll bin heads."""

    def __init__(self, num_bins: int = NUM_BINS, finetune_head: bool = True):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        width = 512 * Bottleneck.expansion
        self.fc_yaw = nn.Linear(width, num_bins)
        self.fc_pitch = nn.Linear(width, num_bins)
        self.fc_roll = nn.Linear(width, num_bins)
        # deep-head-pose's refinement layer: part of its checkpoints, not of its inference path
        self.fc_finetune = nn.Linear(width + 3, 3) if finetune_head else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(yaw, pitch, roll) bin logits, each (N, 66)."""
        x = torch.flatten(self.pool(self.features(x)[-1]), 1)
        return self.fc_yaw(x), self.fc_pitch(x), self.fc_roll(x)


class HardSwish(nn.Module):
    """x * relu6(x + 3) / 6, the activation of the lightweight net's later blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * nn.functional.relu6(x + 3.0) / 6.0


def _conv_bn_act(cin: int, cout: int, k: int, stride: int, groups: int,
                 act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class InvertedResidual(nn.Module):
    """Grouped 1x1 expansion (x2), depthwise kxk, 1x1 projection; every conv BN + activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, act: type[nn.Module], groups: int = 4):
        super().__init__()
        mid = cin * 2
        self.exp_conv = _conv_bn_act(cin, mid, 1, 1, groups, act)
        self.dw_conv = _conv_bn_act(mid, mid, kernel, stride, mid, act)
        self.pw_conv = _conv_bn_act(mid, cout, 1, 1, 1, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw_conv(self.dw_conv(self.exp_conv(x)))


# (out channels, kernel, stride, activation) of blocks 1..7; the stem is 3x3/2 to 16 channels.
_LIGHT_BLOCKS = (
    (32, 3, 2, nn.ReLU), (64, 3, 2, nn.ReLU), (96, 3, 1, nn.ReLU), (96, 5, 2, HardSwish),
    (128, 5, 1, HardSwish), (128, 5, 2, HardSwish), (128, 3, 1, HardSwish),
)


class LightweightHeadPose(nn.Module):
    """The 0.9 MB head-pose net: ``features`` (stem + 7 blocks, global pool) and three bin heads."""

    def __init__(self, num_bins: int = NUM_BINS):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(3, 16, 3, 2, 1, nn.ReLU)]
        cin = 16
        for cout, kernel, stride, act in _LIGHT_BLOCKS:
            layers.append(InvertedResidual(cin, cout, kernel, stride, act))
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc_yaw = nn.Linear(cin, num_bins)
        self.fc_pitch = nn.Linear(cin, num_bins)
        self.fc_roll = nn.Linear(cin, num_bins)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(yaw, pitch, roll) bin logits, each (N, 66)."""
        x = torch.flatten(self.features(x), 1)
        return self.fc_yaw(x), self.fc_pitch(x), self.fc_roll(x)


class HeadPose(nn.Module):
    """A 66-bin head-pose net with its input normalisation and bin decoding.

    ``forward`` takes (N, 3, S, S) RGB in [0, 1] (S = ``input_size``) and returns (N, 3) degrees:
    yaw, pitch, roll.
    """

    def __init__(self, net: nn.Module, arch: str, bin_offset: float, input_size: int = 224):
        super().__init__()
        self.net, self.arch, self.bin_offset, self.input_size = net, arch, bin_offset, input_size
        self.register_buffer("mean", torch.tensor(_IMAGENET["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET["std"]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net((x - self.mean) / self.std)
        return torch.stack([decode_bins(lg, self.bin_offset) for lg in logits], dim=1)


def decode_bins(logits: torch.Tensor, offset: float, width: float = 3.0) -> torch.Tensor:
    """Expected angle in degrees: sum(softmax(logits) * bin_index) * width + offset."""
    idx = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32)
    return (torch.softmax(logits.float(), dim=1) * idx).sum(dim=1) * width + offset


def _unwrap(state: dict) -> dict:
    """The bare state dict of either Hopenet layout (facexlib wraps it in 'params')."""
    for key in ("params_ema", "params", "model"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state


def build(arch: str) -> nn.Module:
    """A fresh network of ``arch`` (``hopenet_r50`` or ``lightweight``)."""
    if arch == "hopenet_r50":
        return HopenetR50()
    if arch == "lightweight":
        return LightweightHeadPose()
    raise ValueError(f"unknown head-pose arch '{arch}'")


def load_state(net: nn.Module, state: dict) -> nn.Module:
    """Strict load; a Hopenet state without ``fc_finetune`` (facexlib) drops that layer first."""
    state = common.strip_prefix(_unwrap(state))
    if isinstance(net, HopenetR50) and not any(k.startswith("fc_finetune.") for k in state):
        net.fc_finetune = None
    return common.load_into(net, state, strict=True)


def load_hopenet(name: str = LIGHTWEIGHT, root: str | Path | None = None, device: str = "cpu",
                 dtype: str = "fp32", random_init: bool = False, hub: bool = False) -> HeadPose:
    """The head-pose model registered as ``name``, in eval mode on ``device``.

    ``random_init`` builds the real architecture with seeded random weights and reads no file.
    ``hub`` fetches a file missing from the weights directory through torch.hub's download
    cache (needs internet; the Google Drive link of deep-head-pose may need a manual download).
    Weights stay fp32 whatever ``dtype``; callers run them under autocast.
    """
    spec = registry.get(name)
    arch = spec.extra["arch"]
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(common.RANDOM_SEED)
            net = build(arch)
    else:
        use_hub = hub and not registry.path_of(name, root).is_file()
        state = hub_state(spec) if use_hub else registry.load_state_dict(name, root)
        net = load_state(build(arch), state)
    model = HeadPose(net, arch, float(spec.extra["bin_offset"]))
    return common.prepare(model, device)


def hub_path(spec: WeightsSpec) -> Path:
    """Where ``hub_state`` keeps ``spec``'s file: torch.hub's checkpoint cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.filename


def hub_state(spec: WeightsSpec) -> dict:
    """Download ``spec``'s first URL into torch.hub's cache, verify it like the registry, load it."""
    if not spec.urls:
        raise registry.MissingWeights(spec, Path(spec.filename))
    target = hub_path(spec)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(spec.urls[0], str(target), progress=False)
    if not spec.sha256 and not registry.allow_unverified_default():
        raise registry.UnverifiedWeights(f"'{spec.name}' has no pinned sha256; set "
                                         f"{registry.UNVERIFIED_ENV_VAR}=1 to load {target} unverified")
    if spec.sha256 and registry.sha256_of(target) != spec.sha256:
        raise registry.BadChecksum(f"{target}: sha256 does not match {spec.sha256} for '{spec.name}'")
    return torch.load(target, map_location="cpu", weights_only=True)
