"""The optimization loop: it lowers the loss, every option runs, and the contract holds."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_content, make_style

from shared.params import StyleParams
from worker.engine import EngineError, Progress, Result, Resume, Snapshot, StyleObjective, VGGFeatures, stylize
from worker.engine.color import rgb_to_yiq
from worker.engine.images import to_tensor
from worker.engine.losses import gram_matrix, tv_loss
from worker.engine.optimize import scale_sizes, split_iterations


def progress(events):
    return [e for e in events if isinstance(e, Progress)]


def test_loss_falls_over_a_short_run(photo, painting, run_engine):
    events, result = run_engine(photo, [painting], iterations=20, size=64)
    assert result.losses.total < 0.15 * result.initial_losses.total
    assert result.losses.style < 0.1 * result.initial_losses.style
    assert result.initial_losses.content == 0  # the content image, where it all starts
    assert result.iterations == 20 and not result.canceled
    assert result.weights == "random" and result.device == "cpu"


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "adam"},
        {"optimizer": "adam", "learning_rate": 0.05},
        {"optimizer": "lbfgs", "learning_rate": 0.5},
        {"init": "style"},
        {"init": "noise"},
        {"pooling": "max"},
        {"content_weight": 0.0},
        {"style_weight": 10.0},
        {"tv_weight": 0.0},
        {"tv_weight": 100.0},
        {"content_layers": ("relu4_2",), "style_layers": ("relu1_1", "relu2_1", "relu3_1")},
        {"content_layers": ("conv3_2", "conv4_2")},
        {"style_layers": ("conv1_1", "conv2_1"), "style_layer_weights": (0.3, 2.0)},
        {"style_scale": 0.5},
        {"style_scale": 2.0},
        {"preserve_colors": "luminance"},
        {"preserve_colors": "histogram"},
        {"preserve_colors": "luminance", "init": "noise", "scales": 2, "size": 128},
        {"scales": 2, "size": 128},
        {"snapshot_every": 2},
        {"seed": 5, "init": "noise"},
    ],
    ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()),
)
def test_every_option_runs_and_lowers_the_loss(content_image, style_image, run_engine, options):
    events, result = run_engine(content_image, [style_image], **{"iterations": 6, **options})
    params = StyleParams(**{"size": 48, "scales": 1, "weights": "random", **options})
    expected_size = scale_sizes(content_image.size, params.size, params.scales)[-1]
    assert result.size == expected_size
    assert result.iterations == 6
    assert np.isfinite(result.losses.total)
    if params.scales == 1:  # losses at different scales are not comparable
        assert result.losses.total < result.initial_losses.total


def test_several_styles_blend_their_gram_targets(random_weights):
    params = StyleParams(weights="random", style_layers=("conv1_1", "conv2_1"))
    net = VGGFeatures(random_weights, (*params.content_layers, "conv1_1", "conv2_1"))
    content = to_tensor(make_content())
    first, second = to_tensor(make_style(seed=1)), to_tensor(make_style(seed=2).rotate(90))
    only_first = StyleObjective(net, params, content, [first], [1.0])
    only_second = StyleObjective(net, params, content, [second], [1.0])
    blended = StyleObjective(net, params, content, [first, second], [0.25, 0.75])
    for name in params.style_layers:
        expected = 0.25 * only_first.style_targets[name] + 0.75 * only_second.style_targets[name]
        assert torch.allclose(blended.style_targets[name], expected, atol=1e-7)


def test_several_styles_with_blend_weights_run(content_image, run_engine):
    styles = [make_style(seed=1), make_style(seed=2)]
    _, result = run_engine(content_image, styles, style_blend=(1.0, 3.0))
    assert result.losses.total < result.initial_losses.total


def test_blend_weights_must_match_the_style_count(content_image, style_image, run_engine):
    with pytest.raises(EngineError, match="2 numbers for 1 style images"):
        run_engine(content_image, [style_image], style_blend=(1.0, 2.0))


def test_coarse_to_fine_reaches_the_requested_size(run_engine, style_image):
    content = make_content(300, 200)
    events, result = run_engine(content, [style_image], size=160, scales=3, iterations=9)
    sizes = [e.size for e in progress(events)]
    assert sorted(set(sizes), key=sizes.index) == [(80, 53), (160, 107)]  # 40 px is below the floor
    assert sizes.count((80, 53)) == 2 and sizes.count((160, 107)) == 7  # the last scale gets 3/4
    assert result.size == (160, 107)
    assert [e.scale for e in progress(events)][-1] == 2


def test_scale_schedule():
    assert scale_sizes((1024, 768), 512, 3) == [(128, 96), (256, 192), (512, 384)]
    assert scale_sizes((768, 1024), 2048, 2) == [(768, 1024), (1536, 2048)]
    assert scale_sizes((100, 100), 128, 4) == [(64, 64), (128, 128)]
    assert scale_sizes((100, 100), 32, 3) == [(32, 32)]
    # A panorama: at 128 px its short side would be 13, too thin for conv5_1's 16.
    assert scale_sizes((1000, 100), 512, 3, min_side=16) == [(256, 26), (512, 51)]
    assert split_iterations(500, 2) == [125, 375]
    assert split_iterations(500, 3) == [62, 63, 375]
    assert split_iterations(2, 3) == [0, 0, 2]
    assert split_iterations(7, 1) == [7]


def _chroma(image):
    return rgb_to_yiq(to_tensor(image))[:, 1:]


@pytest.mark.parametrize("mode", ["luminance", "histogram"])
def test_colour_modes_keep_the_contents_colours(random_weights, mode):
    """Measure how far the output's chroma (YIQ's I and Q) moves from the content's."""
    content, style = make_content(64, 48), make_style(64, 64)
    results = {}
    for colours in ("none", mode):
        params = StyleParams(size=64, iterations=25, scales=1, weights="random", preserve_colors=colours)
        *_, results[colours] = stylize(content, [style], params, device="cpu", weights=random_weights)
    source = _chroma(content.resize(results["none"].size))
    pixel_shift = {k: (_chroma(r.image) - source).abs().mean().item() for k, r in results.items()}
    mean_shift = {
        k: (_chroma(r.image).mean((2, 3)) - source.mean((2, 3))).abs().max().item() for k, r in results.items()
    }
    assert mean_shift["none"] > 0.05, "the style should pull plain transfer's colours away"
    assert mean_shift[mode] < 0.3 * mean_shift["none"]
    if mode == "luminance":
        assert pixel_shift[mode] < 0.01  # the content's own chroma, pixel for pixel


def test_same_seed_repeats_bit_for_bit_and_another_seed_differs(content_image, style_image, run_engine):
    runs = [run_engine(content_image, [style_image], init="noise", seed=seed)[1] for seed in (3, 3, 4)]
    first, again, other = (np.asarray(r.image) for r in runs)
    assert np.array_equal(first, again)
    assert runs[0].losses == runs[1].losses
    assert not np.array_equal(first, other)


def test_snapshots_arrive_at_the_right_iterations(content_image, style_image, run_engine):
    events, result = run_engine(content_image, [style_image], iterations=10, snapshot_every=3)
    snapshots = [e for e in events if isinstance(e, Snapshot)]
    assert [s.iteration for s in snapshots] == [3, 6, 9, 10]
    assert [s.final for s in snapshots] == [False, False, False, True]
    assert snapshots[-1].image is result.image
    by_iteration = {e.iteration: e.losses for e in progress(events)}
    assert all(s.losses == by_iteration[s.iteration] for s in snapshots[:-1])
    assert all(s.image.size == result.size for s in snapshots)


def test_no_interval_snapshots_when_turned_off(content_image, style_image, run_engine):
    events, _ = run_engine(content_image, [style_image], iterations=4, snapshot_every=0)
    assert [e.final for e in events if isinstance(e, Snapshot)] == [True]


def test_output_is_the_lowest_loss_image(content_image, style_image, run_engine):
    # Adam at a large step overshoots: its third iterate is far worse than its second.
    events, result = run_engine(content_image, [style_image], optimizer="adam", learning_rate=1.0, iterations=3)
    totals = [e.losses.total for e in progress(events)]
    assert result.losses.total == min(totals + [result.initial_losses.total])
    assert totals[-1] > result.losses.total


def test_cancel_stops_within_one_iteration_and_keeps_the_image(content_image, style_image, run_engine):
    seen = []

    def should_stop():
        return len(seen) >= 3

    params = StyleParams(size=48, iterations=50, scales=1, weights="random")
    events = []
    for event in stylize(content_image, [style_image], params, device="cpu", should_stop=should_stop):
        events.append(event)
        if isinstance(event, Progress):
            seen.append(event)
    result = events[-1]
    assert isinstance(result, Result) and result.canceled
    assert len(progress(events)) == 3 and result.iterations == 3
    assert result.size == (48, 36)
    assert result.losses.total == min(e.losses.total for e in seen)


def test_cancel_at_a_coarse_scale_still_returns_the_requested_size(content_image, style_image, run_engine):
    polls = iter(range(100))  # the engine polls once before each iteration
    events, result = run_engine(
        content_image, [style_image], size=128, scales=2, iterations=20, should_stop=lambda: next(polls) >= 2
    )
    assert result.canceled and result.iterations == 2
    assert result.size == (128, 96)


def test_cancel_before_the_first_iteration_returns_the_start(content_image, style_image, run_engine):
    _, result = run_engine(content_image, [style_image], should_stop=lambda: True)
    assert result.canceled and result.iterations == 0
    assert result.losses.content == 0  # the content image itself


@pytest.mark.parametrize(
    "options, message",
    [
        ({"size": 16, "style_layers": ("conv5_1",)}, "needs at least 16 px on the short side"),
    ],
)
def test_sizes_too_small_for_the_layers_are_clear_errors(content_image, style_image, run_engine, options, message):
    with pytest.raises(EngineError, match=message):
        run_engine(content_image, [style_image], **options)


def test_no_style_image_is_an_error(content_image, run_engine):
    with pytest.raises(EngineError, match="at least one style image"):
        run_engine(content_image, [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU (CI has none)")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(content_image, style_image):
    with pytest.raises(EngineError, match="no CUDA GPU is available"):
        list(stylize(content_image, [style_image], StyleParams(weights="random"), device="cuda"))


def test_a_pooling_layer_as_the_deepest_layer_runs(content_image, style_image, run_engine):
    _, result = run_engine(content_image, [style_image], size=48, style_layers=("conv1_1", "pool5"))
    assert result.size == (48, 36)  # the short side is at least the 32 px pool5 needs


def test_adam_reports_the_image_each_step_produced(content_image, style_image, run_engine):
    events, result = run_engine(content_image, [style_image], optimizer="adam", iterations=3)
    first = progress(events)[0].losses
    assert first != result.initial_losses  # the start is evaluated before the first step


def test_colour_helpers():
    from worker.engine.color import match_color, match_luminance, yiq_to_rgb

    image = torch.rand(1, 3, 8, 8)
    assert torch.allclose(yiq_to_rgb(rgb_to_yiq(image)), image, atol=1e-5)
    luma, reference = torch.rand(1, 1, 8, 8) * 0.2, torch.rand(1, 1, 8, 8) * 0.5 + 0.3
    matched = match_luminance(luma, reference)
    assert matched.mean().item() == pytest.approx(reference.mean().item(), abs=1e-4)
    assert matched.std().item() == pytest.approx(reference.std().item(), abs=1e-4)
    # Colour matching gives the image the reference's mean and covariance.
    source = torch.rand(1, 3, 16, 16) * torch.tensor([0.3, 0.2, 0.4]).view(1, 3, 1, 1) + 0.2
    target = torch.rand(1, 3, 16, 16) * torch.tensor([0.2, 0.5, 0.1]).view(1, 3, 1, 1) + 0.1
    recoloured = match_color(source, target).reshape(3, -1).double()
    assert torch.allclose(recoloured.mean(1), target.reshape(3, -1).double().mean(1), atol=1e-3)
    assert torch.allclose(torch.cov(recoloured), torch.cov(target.reshape(3, -1).double()), atol=1e-3)


@pytest.mark.parametrize("device, message", [("mps", "unknown device 'mps'"), ("meta", "unknown device 'meta'")])
def test_unsupported_devices_are_clear_errors(device, message):
    from worker.engine import resolve_device

    with pytest.raises(EngineError, match=message):
        resolve_device(device)


@pytest.mark.parametrize("scales, at", [(1, 4), (2, 4), (2, 8), (2, 0)])
def test_a_run_resumes_from_a_snapshot_and_the_count_goes_on(content_image, style_image, run_engine, scales, at):
    options = {"iterations": 12, "scales": scales, "snapshot_every": 4, "size": 64}
    events, full = run_engine(content_image, [style_image], **options)
    snapshots = {e.iteration: e for e in events if isinstance(e, Snapshot) and not e.final}
    image = snapshots[at].image if at else content_image
    resumed, result = run_engine(content_image, [style_image], resume=Resume(at, image), **options)
    iterations = [e.iteration for e in resumed if isinstance(e, Progress)]
    assert iterations == list(range(at + 1, 13))  # picks up where it stopped, never from 1
    assert result.iterations == 12 and result.size == full.size and not result.canceled
    # The resumed run starts from the snapshot, not from the content: its first loss is close
    # to the interrupted run's at that point, far below a fresh start's.
    if at:
        first = next(e for e in resumed if isinstance(e, Progress)).losses.total
        fresh = next(e for e in events if isinstance(e, Progress)).losses.total
        assert first < fresh
    assert result.losses.total < 0.5 * full.initial_losses.total


def test_a_run_interrupted_after_its_last_iteration_only_makes_the_output(content_image, style_image, run_engine):
    events, full = run_engine(content_image, [style_image], iterations=6)
    resumed, result = run_engine(content_image, [style_image], iterations=6, resume=Resume(6, full.image))
    assert not [e for e in resumed if isinstance(e, Progress)]
    assert result.iterations == 6 and result.size == full.size


def test_resuming_past_the_end_is_an_error(content_image, style_image, run_engine):
    with pytest.raises(EngineError, match="cannot resume at iteration 7 of 6"):
        run_engine(content_image, [style_image], iterations=6, resume=Resume(7, content_image))


def test_gram_matrix_of_channels_last_features_equals_the_nchw_one():
    features = torch.randn(2, 5, 6, 7)
    channels_last = features.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(gram_matrix(channels_last), gram_matrix(features), rtol=1e-5, atol=1e-6)


def test_objective_agrees_with_a_textbook_nchw_computation(random_weights):
    """The engine's fast path (channels-last, in-place ReLUs) changes neither losses nor gradient.

    The two sum in different orders (oneDNN's channels-last kernels against NCHW ones), so they
    agree to float32 accumulation error: about 1e-6 relative per layer, compounded over the
    16 layers and the backward pass, well under the bounds below.
    """
    params = StyleParams(weights="random")
    generator = torch.Generator().manual_seed(11)
    content, style = torch.rand(1, 3, 48, 64, generator=generator), torch.rand(1, 3, 64, 64, generator=generator)
    net = VGGFeatures(random_weights, (*params.content_layers, *params.style_layers), params.pooling)
    objective = StyleObjective(net, params, content, [style], params.style_blend_for(1))
    image = (content + 0.05 * torch.randn(content.shape, generator=generator)).clamp(0, 1)

    def plain(x: torch.Tensor) -> dict[str, torch.Tensor]:
        x, out = (x - net.mean) / net.std, {}
        for name, layer in zip(net.names, net.layers):
            if isinstance(layer, torch.nn.Conv2d):  # NCHW input and weights
                x = F.conv2d(x.contiguous(), layer.weight.contiguous(), layer.bias, padding=1)
            else:
                x = torch.relu(x) if isinstance(layer, torch.nn.ReLU) else layer(x)
            out[name] = x
        return out

    def gram(f: torch.Tensor) -> torch.Tensor:
        flat = f.contiguous().flatten(2)
        return flat @ flat.transpose(1, 2) / flat[0].numel()

    def relative(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ((x - t) ** 2).sum() / (t**2).sum()

    ours, theirs = image.clone().requires_grad_(True), image.clone().requires_grad_(True)
    terms = objective(ours)
    with torch.no_grad():
        c_target, s_feats = plain(content)["relu4_2"], plain(style)
    feats = plain(theirs)
    layer_weights = [w / sum(params.style_layer_weights) for w in params.style_layer_weights]
    expected = (
        params.content_weight * relative(feats["relu4_2"], c_target),
        params.style_weight
        * sum(w * relative(gram(feats[n]), gram(s_feats[n])) for n, w in zip(params.style_layers, layer_weights)),
        params.tv_weight * tv_loss(theirs),
    )
    for got, want in zip(terms, expected):
        assert got.item() == pytest.approx(want.item(), rel=1e-4)
    sum(terms).backward()
    sum(expected).backward()
    assert float((ours.grad - theirs.grad).norm() / theirs.grad.norm()) < 1e-3
