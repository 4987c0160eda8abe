"""Style targets (Gram matrices) kept between jobs, so a preset style is run through VGG once.

A worker process keeps one `TargetCache` and hands it to every `stylize`. An entry is the
Gram matrices of one style image at one scale, keyed by a digest of the exact pixels fed to
the network (so the size, style_scale and colour handling, which all change those pixels,
are part of the key), the style layers, and the network: its weights (by identity), pooling,
device and precision. (A feature's values do not depend on where the network is cut.) Blend weights
are applied after the lookup, so they need no key of their own; nor do style masks, which
weight the output's features (masks.py), never the style's: a target is always the Gram
matrix of the whole style image.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .losses import gram_matrix

# Each scale of the default five style layers holds 2.4 MB of Gram matrices (64² to 512²
# float32), about 7 MB a job at three scales: 64 MiB keeps the last handful of styles.
DEFAULT_MAX_BYTES = 64 * 2**20


@dataclass(frozen=True)
class NetworkKey:
    """What a network's features depend on besides the image.

    The weights are named by identity: the entry keeps them alive, so their id cannot be
    reused by other weights while the entry exists.
    """

    weights: Mapping[str, torch.Tensor]
    pooling: str
    device: str
    precision: str = "fp32"  # what the convolutions run in

    def __hash__(self) -> int:
        return hash((id(self.weights), self.pooling, self.device, self.precision))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, NetworkKey)
            and self.weights is other.weights
            and (self.pooling, self.device, self.precision) == (other.pooling, other.device, other.precision)
        )


def pixels_digest(image: torch.Tensor) -> str:
    """A digest of a tensor's dtype, shape and values (copied to the host: a sync on a GPU)."""
    data = image.detach().to("cpu", copy=False).contiguous()
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


class TargetCache:
    """A least-recently-used cache of style Gram matrices, bounded by entries and bytes."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = 32):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, dict[str, torch.Tensor]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> dict[str, torch.Tensor] | None:
        grams = self._entries.get(key)
        if grams is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return grams

    def put(self, key: Hashable, grams: dict[str, torch.Tensor]) -> None:
        size = _nbytes(grams)
        if size > self.max_bytes:
            return  # larger than the whole budget: not worth evicting everything for
        if key in self._entries:
            self.bytes -= _nbytes(self._entries.pop(key))
        self._entries[key] = grams
        self.bytes += size
        while self.bytes > self.max_bytes or len(self._entries) > self.max_entries:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= _nbytes(evicted)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


def style_grams(
    net: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    style: torch.Tensor,
    layers: Sequence[str],
    cache: TargetCache | None = None,
    network: NetworkKey | None = None,
) -> dict[str, torch.Tensor]:
    """{layer: Gram matrix} of `style` (1, C, H, W), from `cache` when it has them."""
    key = None
    if cache is not None and network is not None:
        key = (network, tuple(layers), pixels_digest(style))
        cached = cache.get(key)
        if cached is not None:
            return cached
    with torch.no_grad():
        features = net(style)
        grams = {name: gram_matrix(features[name]) for name in layers}
    if key is not None:
        cache.put(key, grams)
    return grams


def _nbytes(grams: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in grams.values())
