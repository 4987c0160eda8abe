"""The style-target cache: a hit changes nothing but the time, anything the targets depend on misses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_content, make_style

from shared.params import StyleParams
from worker.engine import Result, load_weights, stylize
from worker.engine.targets import TargetCache


def run(params, styles, weights, cache):
    events = list(stylize(make_content(), styles, params, device="cpu", weights=weights, targets_cache=cache))
    assert isinstance(events[-1], Result)
    return events[-1]


def pixels(result):
    return torch.from_numpy(np.asarray(result.image).copy())


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"scales": 2, "size": 96, "style_scale": 0.5},
        {"preserve_colors": "luminance"},
        {"preserve_colors": "histogram"},
        {"style_blend": (0.3, 0.7)},
    ],
    ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()) or "defaults",
)
def test_a_hit_gives_bit_identical_results(random_weights, options):
    params = StyleParams(**{"size": 48, "iterations": 5, "scales": 1, "weights": "random", **options})
    styles = [make_style(), make_style(seed=2)] if "style_blend" in options else [make_style()]
    uncached = run(params, styles, random_weights, None)
    cache = TargetCache()
    cold = run(params, styles, random_weights, cache)
    assert (cache.hits, cache.misses) == (0, len(cache)) and len(cache) > 0
    warm = run(params, styles, random_weights, cache)
    assert cache.hits == len(cache)  # every scale's every style came from the cache
    for result in (cold, warm):
        assert torch.equal(pixels(result), pixels(uncached))
        assert result.losses == uncached.losses and result.initial_losses == uncached.initial_losses


@pytest.mark.parametrize(
    "change",
    [
        {"style_scale": 0.5},
        {"size": 40},
        {"pooling": "max"},
        {"style_layers": ("conv1_1", "conv2_1")},
        {"preserve_colors": "luminance"},
        {"preserve_colors": "histogram"},
    ],
    ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()),
)
def test_anything_the_targets_depend_on_misses(random_weights, change):
    base = {"size": 48, "iterations": 1, "scales": 1, "weights": "random"}
    cache = TargetCache()
    run(StyleParams(**base), [make_style()], random_weights, cache)
    run(StyleParams(**{**base, **change}), [make_style()], random_weights, cache)
    assert (cache.hits, cache.misses) == (0, 2)


def test_other_style_pixels_and_other_weights_miss(random_weights):
    params = StyleParams(size=48, iterations=1, scales=1, weights="random")
    cache = TargetCache()
    run(params, [make_style()], random_weights, cache)
    run(params, [make_style(seed=3)], random_weights, cache)
    run(params, [make_style()], load_weights("random"), cache)  # equal values, but other weights
    assert (cache.hits, cache.misses) == (0, 3)
    # What does not shape the targets still hits: the content weight, the seed, the iterations.
    run(
        params.model_copy(update={"content_weight": 5.0, "seed": 3, "iterations": 2}),
        [make_style()],
        random_weights,
        cache,
    )
    assert cache.hits == 1


def test_least_recently_used_entries_go_first_within_the_bounds():
    gram = {"conv1_1": torch.zeros(64, 64)}  # 16 KiB
    cache = TargetCache(max_bytes=3 * 16 * 2**10, max_entries=10)
    for key in "abc":
        cache.put(key, gram)
    assert cache.get("a") is gram  # now the most recently used
    cache.put("d", gram)
    assert cache.get("b") is None and cache.get("a") is gram and len(cache) == 3
    assert cache.bytes == 3 * 16 * 2**10
    few = TargetCache(max_entries=2)
    for key in "abc":
        few.put(key, gram)
    assert len(few) == 2 and few.get("a") is None
    TargetCache(max_bytes=1).put("e", gram)  # larger than the budget: not kept, no error
