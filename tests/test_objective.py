"""The scale-free objective, the box-constrained optimizers and the precision choice (issue 12)."""

import numpy as np
import pytest
import torch
from conftest import PAINTING, PHOTO, load, make_content, make_style

from shared.params import StyleParams
from worker.engine import EngineError, Progress, Result, StyleObjective, VGGFeatures, load_weights, stylize
from worker.engine.descent import Descent, ProjectedAdam, ProjectedLBFGS
from worker.engine.images import to_tensor
from worker.engine.objective import resolve_precision
from worker.engine.vgg import LAYER_NAMES, random_state


def _conv_keys() -> list[str]:
    """State-dict prefixes of the 16 convolutions, in order ('0', '2', ...): a layer's name and
    its module's index in torchvision's feature stack go together."""
    return [str(i) for i, name in enumerate(LAYER_NAMES) if name.startswith("conv")]


def _with_biases(seed: int = 7) -> dict[str, torch.Tensor]:
    """Random VGG weights with non-zero biases, so that scaling the biases matters."""
    state = random_state()
    generator = torch.Generator().manual_seed(seed)
    for key in _conv_keys():
        state[f"{key}.bias"] = 0.05 * torch.randn(state[f"{key}.bias"].shape, generator=generator)
    return state


def _rescaled(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """conv1_1 (weights and bias) x8, conv3_1's weights x1/4, and every later bias scaled by
    the factor its layer's activations now carry (8, then 2 from conv3_1 on): every feature is
    the original one times a per-layer constant, which the ReLUs and the pooling pass on."""
    scaled = {key: value.clone() for key, value in state.items()}
    factor = 1.0
    for key, name in zip(_conv_keys(), [n for n in LAYER_NAMES if n.startswith("conv")]):
        if name == "conv1_1":
            scaled[f"{key}.weight"] *= 8
            factor = 8.0
        elif name == "conv3_1":
            scaled[f"{key}.weight"] /= 4
            factor /= 4
        scaled[f"{key}.bias"] = state[f"{key}.bias"] * factor
    return scaled


def _run(params: StyleParams, weights, content, style) -> Result:
    events = list(stylize(content, [style], params, device="cpu", weights=weights))
    return events[-1]


def test_a_network_with_rescaled_layers_paints_the_same_picture(tmp_path):
    """The issue's check: conv1_1 x8 (biases after it alike) and conv3_1 x1/4, written to a file
    and loaded as a user's weights would be, give the same 40-iteration picture."""
    original, rescaled = tmp_path / "original.pth", tmp_path / "rescaled.pth"
    state = _with_biases()
    torch.save(state, original)
    torch.save(_rescaled(state), rescaled)
    net_a = VGGFeatures(load_weights(str(original)), ["relu3_1", "relu5_1"])
    net_b = VGGFeatures(load_weights(str(rescaled)), ["relu3_1", "relu5_1"])
    probe = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    fa, fb = net_a(probe), net_b(probe)
    assert torch.allclose(fb["relu3_1"], 2 * fa["relu3_1"], rtol=1e-4, atol=1e-5)  # the scaling took
    assert torch.allclose(fb["relu5_1"], 2 * fa["relu5_1"], rtol=1e-4, atol=1e-5)

    params = StyleParams(size=64, iterations=40, scales=1, weights="random")
    content, style = load(PHOTO), load(PAINTING)
    a = _run(params, load_weights(str(original)), content, style)
    b = _run(params, load_weights(str(rescaled)), content, style)
    difference = np.abs(np.asarray(a.image, dtype=float) - np.asarray(b.image, dtype=float)).mean()
    assert difference <= 1.0  # at most 1/255 on average, in 0-255 units
    assert a.losses.total == pytest.approx(b.losses.total, rel=1e-3)
    assert a.losses.total < 0.5 * a.initial_losses.total  # and it did paint


def _content_only(random_weights, target: torch.Tensor) -> StyleObjective:
    params = StyleParams(weights="random", style_weight=0.0, tv_weight=0.0, content_layers=("relu1_1",))
    net = VGGFeatures(random_weights, (*params.content_layers, *params.style_layers))
    return StyleObjective(net, params, target, [target], [1.0])


@pytest.mark.parametrize("kind", ["lbfgs", "adam"])
def test_a_pixel_driven_out_of_range_comes_back(random_weights, kind):
    """The objective sees the pixels unclamped: pixels pushed past 1 are projected onto the
    bound and the gradient brings them back to the target, rather than freezing there as they
    did when the loss was taken on a clamped copy."""
    target = torch.full((1, 3, 24, 24), 0.3)
    start = target.clone()
    start[..., 8:16, 8:16] = 1.7  # out of range: a clamped copy would have no gradient here
    descent = Descent(_content_only(random_weights, target), lambda x: x)
    if kind == "lbfgs":
        optimizer = ProjectedLBFGS(descent, start, history=10)
    else:
        optimizer = ProjectedAdam(descent, start, lr=0.05)
    assert optimizer.x.max().item() == 1.0  # projected onto the box from the start
    for _ in range(30):
        optimizer.step()
        assert 0 <= optimizer.x.min().item() and optimizer.x.max().item() <= 1  # every iterate is an image
    patch = optimizer.best[..., 8:16, 8:16]
    assert patch.max().item() < 0.6, "the saturated patch should move back towards 0.3"


def test_lbfgs_reports_its_accepted_iterates_and_never_goes_uphill(photo, painting, random_weights):
    params = StyleParams(size=48, iterations=15, scales=1, weights="random", snapshot_every=5)
    events = list(stylize(photo, [painting], params, device="cpu", weights=random_weights))
    totals = [e.losses.total for e in events if isinstance(e, Progress)]
    assert all(b <= a for a, b in zip(totals, totals[1:]))
    result = events[-1]
    assert result.losses.total == pytest.approx(totals[-1])  # the output is the last accepted iterate
    evaluations = [e.evaluations for e in events if isinstance(e, Progress)]
    assert evaluations == sorted(evaluations) and evaluations[-1] >= 16  # the start and one per iteration at least


def test_each_lbfgs_iteration_costs_about_one_evaluation(random_weights):
    params = StyleParams(weights="random")
    net = VGGFeatures(random_weights, (*params.content_layers, *params.style_layers))
    content, style = to_tensor(make_content(48, 36)), to_tensor(make_style(48, 48))
    descent = Descent(StyleObjective(net, params, content, [style], [1.0]), lambda x: x)
    optimizer = ProjectedLBFGS(descent, content, history=20)
    for _ in range(20):
        optimizer.step()
    # 1 for the start + 1 per accepted step, plus the rare shortened trial.
    assert 21 <= descent.evaluations <= 26


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(EngineError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(EngineError, match="unknown precision"):
        resolve_precision("fp8", cpu)


def test_bf16_convolutions_paint_nearly_the_fp32_picture(photo, painting, random_weights):
    """bf16 autocast on the CPU (the GPU's default path, runnable here); Grams stay float32."""
    runs = {}
    for precision in ("fp32", "bf16"):
        params = StyleParams(size=48, iterations=10, scales=1, weights="random", precision=precision)
        runs[precision] = _run(params, random_weights, photo, painting)
    assert runs["bf16"].precision == "bf16" and runs["fp32"].precision == "fp32"
    a, b = (np.asarray(runs[p].image, dtype=float) for p in ("fp32", "bf16"))
    assert np.abs(a - b).mean() < 8  # out of 255: the same picture, bf16 rounding aside
    assert runs["bf16"].losses.total < 0.9 * runs["bf16"].initial_losses.total


def test_defaults_read_the_rectified_outputs():
    params = StyleParams()
    assert params.content_layers == ("relu4_2",)
    assert params.style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert params.style_layer_weights == (256.0, 64.0, 16.0, 4.0, 1.0)
    assert StyleParams(style_layers=("relu1_1", "relu2_1")).style_layer_weights == (4.0, 1.0)
