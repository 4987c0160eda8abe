"""VGG-19 features: torchvision's architecture, frozen, cut after the deepest layer in use.

Weights come from torchvision's ImageNet checkpoint (its normal loader and cache under
TORCH_HOME), from a file named by IMPASTO_VGG_WEIGHTS or by path, or from a fixed seed.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import VGG19_Weights
from torchvision.models.vgg import cfgs, make_layers

from .errors import EngineError, WeightsError, WeightsUnavailable

log = logging.getLogger(__name__)

# The statistics torchvision's ImageNet weights were trained with; images enter in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Every process that falls back to random weights builds the same network from this seed,
# so results (and cached style targets) agree across workers.
RANDOM_WEIGHTS_SEED = 0

WEIGHTS_ENV = "IMPASTO_VGG_WEIGHTS"
OFFLINE_ENV = "IMPASTO_OFFLINE"

HOW_TO_PROVIDE = (
    f"download {VGG19_Weights.IMAGENET1K_V1.url} on a machine with internet and set "
    f"{WEIGHTS_ENV}=/path/to/vgg19-dcbb9e9d.pth (or put it in $TORCH_HOME/hub/checkpoints/), "
    f"or use --weights random"
)


def _layer_names() -> tuple[str, ...]:
    """Name torchvision's VGG-19 feature modules by meaning: conv1_1, relu1_1, ..., pool5."""
    names: list[str] = []
    block, conv = 1, 1
    for entry in cfgs["E"]:
        if entry == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return tuple(names)


LAYER_NAMES = _layer_names()


def _empty_features() -> nn.Sequential:
    """torchvision's VGG-19 feature stack with unallocated weights (no RNG, no memory used)."""
    with torch.device("meta"):
        return make_layers(cfgs["E"])


def _expected_shapes() -> dict[str, torch.Size]:
    return {key: value.shape for key, value in _empty_features().state_dict().items()}


@dataclass(frozen=True)
class LoadedWeights:
    """VGG-19 feature weights (keys like '0.weight', float32, on CPU) and where they came from."""

    state: Mapping[str, torch.Tensor]
    source: str  # "imagenet", "random", or the path of the file read
    warning: str | None = None  # set when `auto` fell back to random weights


def load_weights(spec: str = "auto", *, offline: bool | None = None) -> LoadedWeights:
    """Load weights by spec: 'auto', 'imagenet', 'random', or a path to a state-dict file.

    `offline` (default: the IMPASTO_OFFLINE environment variable) forbids downloading.
    """
    if offline is None:
        offline = os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")
    if spec == "random":
        return LoadedWeights(random_state(), "random")
    if spec == "imagenet":
        return _load_imagenet(offline)
    if spec == "auto":
        try:
            return _load_imagenet(offline)
        except WeightsUnavailable as err:  # a named or cached file that is broken still fails
            warning = (
                f"ImageNet VGG-19 weights unavailable ({err}). Using seeded RANDOM weights: "
                f"the result is a texture-like stylization, not a real style transfer."
            )
            log.warning("%s", warning)
            return LoadedWeights(random_state(), "random", warning)
    return LoadedWeights(_read_file(spec), spec)


def random_state(seed: int = RANDOM_WEIGHTS_SEED) -> dict[str, torch.Tensor]:
    """Seeded He-normal weights, zero biases.

    torchvision initialises an untrained VGG with mode="fan_out", which halves the
    activations' variance wherever the channels double, leaving conv4/conv5 features some
    20 times weaker than conv1's. mode="fan_in" keeps every layer near unit scale, as trained
    weights roughly are, so the default loss weights still balance content and style.
    """
    generator = torch.Generator().manual_seed(seed)
    features = _empty_features().to_empty(device="cpu")
    for module in features:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            nn.init.zeros_(module.bias)
    return {key: value.detach() for key, value in features.state_dict().items()}


def _load_imagenet(offline: bool) -> LoadedWeights:
    path = os.environ.get(WEIGHTS_ENV)
    if path:
        return LoadedWeights(_read_file(path), "imagenet")
    weights = VGG19_Weights.IMAGENET1K_V1
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    was_cached = os.path.exists(cached)
    if offline and not was_cached:
        raise WeightsUnavailable(
            f"the ImageNet VGG-19 weights are not cached at {cached} and "
            f"downloads are off ({OFFLINE_ENV}); {HOW_TO_PROVIDE}"
        )
    if not was_cached:
        log.warning("downloading the ImageNet VGG-19 weights (548 MB) to %s", cached)
    try:
        # torchvision's own path: the TORCH_HOME cache first, then a download into it.
        state = weights.get_state_dict(progress=False)
    except OSError as err:  # no network, DNS, HTTP and disk errors are all OSErrors
        if was_cached:
            raise WeightsError(f"cannot read the cached weights {cached} ({err}); delete it") from err
        raise WeightsUnavailable(
            f"could not download the ImageNet VGG-19 weights ({type(err).__name__}: {err}); {HOW_TO_PROVIDE}"
        ) from err
    except _UNREADABLE as err:  # a corrupt or truncated file in the cache
        raise WeightsError(
            f"the cached weights {cached} are corrupt ({type(err).__name__}); delete the file "
            f"and run again, or {HOW_TO_PROVIDE}"
        ) from err
    return LoadedWeights(_features_state(state, cached), "imagenet")


def _read_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path} does not exist; {HOW_TO_PROVIDE}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as err:
        raise WeightsError(
            f"weights file {path} is not a PyTorch state dict ({type(err).__name__}); expected "
            f"torchvision's VGG-19 checkpoint (vgg19-dcbb9e9d.pth) or its 'features' part"
        ) from err
    return _features_state(state, path)


# What torch.load raises for a file that is not a (safe) PyTorch checkpoint.
_UNREADABLE = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    zipfile.BadZipFile,
    KeyError,
    IndexError,
    OSError,
)


def _features_state(state: object, origin: str) -> dict[str, torch.Tensor]:
    """Accept torchvision's full VGG-19 state dict or a features-only one; check every shape."""
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"weights file {origin} holds a {type(state).__name__}, not a state dict")
    prefixed = any(str(key).startswith("features.") for key in state)
    result: dict[str, torch.Tensor] = {}
    for key, shape in _expected_shapes().items():
        source_key = f"features.{key}" if prefixed else key
        tensor = state.get(source_key)
        if not isinstance(tensor, torch.Tensor):
            raise WeightsError(
                f"weights file {origin} has no tensor {source_key!r}; expected torchvision's "
                f"VGG-19 state dict (features.0.weight ... features.34.bias)"
            )
        if tensor.shape != shape:
            raise WeightsError(
                f"weights file {origin}: {source_key} has shape {tuple(tensor.shape)} but VGG-19 "
                f"needs {tuple(shape)}; is this a VGG-19 checkpoint?"
            )
        result[key] = tensor.detach().to(torch.float32)
    return result


class VGGFeatures(nn.Module):
    """Frozen VGG-19 that maps an image in [0, 1] to the features of the named layers."""

    def __init__(self, weights: LoadedWeights, layers: Iterable[str], pooling: str = "avg"):
        super().__init__()
        self.wanted = frozenset(layers)
        unknown = sorted(self.wanted - set(LAYER_NAMES))
        if unknown:
            raise EngineError(f"unknown VGG-19 layer(s) {', '.join(unknown)}")
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', not {pooling!r}")
        depth = max(LAYER_NAMES.index(name) for name in self.wanted) + 1
        self.names = LAYER_NAMES[:depth]

        full = _empty_features().to_empty(device="cpu")
        full.load_state_dict(dict(weights.state))
        modules: list[nn.Module] = []
        for module in full[: len(self.names)]:
            if isinstance(module, nn.MaxPool2d) and pooling == "avg":
                module = nn.AvgPool2d(kernel_size=2, stride=2)
            elif isinstance(module, nn.ReLU):
                # In place only where the convolution's output is not itself a wanted
                # feature: an in-place ReLU would overwrite it.
                module = nn.ReLU(inplace=self.names[len(modules) - 1] not in self.wanted)
            modules.append(module)
        # Channels-last (NHWC) weights and activations: oneDNN's convolutions on CPU, and
        # cuDNN's on recent GPUs, run faster in it than in NCHW (bench/engine.py).
        self.layers = nn.Sequential(*modules).to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval()
        self.requires_grad_(False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> {layer name: (B, C, H', W')} for the wanted layers.

        The features are channels-last in memory (same shape and values, other strides).
        """
        x = ((image - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        features = {}
        for name, layer in zip(self.names, self.layers):
            x = layer(x)
            if name in self.wanted:
                features[name] = x
        return features
