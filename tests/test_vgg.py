"""VGG-19 features: naming, cutting, pooling, freezing, and the weights loader."""

import logging

import pytest
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from shared.params import VGG19_LAYERS
from worker.engine import LAYER_NAMES, EngineError, VGGFeatures, WeightsError, load_weights
from worker.engine.vgg import random_state


def test_layer_names_agree_with_the_params_model_and_torchvision():
    assert LAYER_NAMES == VGG19_LAYERS
    assert len(LAYER_NAMES) == len(make_layers(cfgs["E"]))
    assert LAYER_NAMES[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert LAYER_NAMES.index("conv4_2") == 21 and LAYER_NAMES.index("conv5_1") == 28


def test_network_is_cut_after_the_deepest_layer_and_frozen(random_weights):
    net = VGGFeatures(random_weights, ["conv1_1", "conv3_1"], pooling="avg")
    assert len(net.layers) == LAYER_NAMES.index("conv3_1") + 1
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.training


@pytest.mark.parametrize("pooling, kind", [("avg", nn.AvgPool2d), ("max", nn.MaxPool2d)])
def test_pooling_choice(random_weights, pooling, kind):
    net = VGGFeatures(random_weights, ["conv5_1"], pooling=pooling)
    pools = [m for m in net.layers if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))]
    assert len(pools) == 4 and all(isinstance(m, kind) for m in pools)


def test_features_match_torchvision_and_conv_outputs_survive_relu(random_weights):
    """conv4_2 is taken before its ReLU: an in-place ReLU must not overwrite it."""
    net = VGGFeatures(random_weights, ["conv4_2", "relu4_2", "conv1_1"], pooling="max")
    reference = make_layers(cfgs["E"])
    reference.load_state_dict(dict(random_weights.state))
    image = torch.rand(1, 3, 40, 40)
    normalised = (image - net.mean) / net.std
    features = net(image)
    with torch.no_grad():
        expected_conv = reference[: LAYER_NAMES.index("conv4_2") + 1](normalised.clone())
    # Features reach ~10 here; channels-last convolutions round differently from NCHW ones
    # (~2e-5 absolute, float32 rounding), so the tolerance is relative to that scale.
    assert torch.allclose(features["conv4_2"], expected_conv, atol=1e-4)
    assert (features["conv4_2"] < 0).any(), "conv4_2 lost its negative values to a ReLU"
    assert torch.allclose(features["relu4_2"], expected_conv.clamp_min(0), atol=1e-4)


def test_unknown_layer_is_an_engine_error(random_weights):
    with pytest.raises(EngineError, match="conv6_1"):
        VGGFeatures(random_weights, ["conv6_1"])


def test_random_weights_repeat_and_do_not_touch_the_global_rng():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b = random_state(), random_state()
    after = torch.rand(3)
    assert torch.equal(before, after)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], random_state(seed=1)["0.weight"])


def _torchvision_file(path, state, *, prefix="features."):
    """Write a checkpoint laid out like torchvision's vgg19 state dict (classifier trimmed:
    the real one is 500 MB, and the loader ignores it)."""
    checkpoint = {f"{prefix}{k}": v for k, v in state.items()}
    checkpoint["classifier.6.bias"] = torch.zeros(1000)
    torch.save(checkpoint, path)


def test_loads_a_torchvision_format_file_by_path(tmp_path):
    state = random_state(seed=7)
    _torchvision_file(tmp_path / "vgg19.pth", state)
    loaded = load_weights(str(tmp_path / "vgg19.pth"))
    assert loaded.source == str(tmp_path / "vgg19.pth") and loaded.warning is None
    assert all(torch.equal(loaded.state[k], state[k]) for k in state)


def test_loads_a_features_only_file(tmp_path):
    state = random_state(seed=8)
    torch.save(state, tmp_path / "features.pth")
    loaded = load_weights(str(tmp_path / "features.pth"))
    assert torch.equal(loaded.state["34.bias"], state["34.bias"])


def test_imagenet_reads_the_file_named_by_the_environment(tmp_path, monkeypatch):
    state = random_state(seed=9)
    _torchvision_file(tmp_path / "mine.pth", state)
    monkeypatch.setenv("IMPASTO_VGG_WEIGHTS", str(tmp_path / "mine.pth"))
    loaded = load_weights("imagenet")
    assert loaded.source == "imagenet"
    assert torch.equal(loaded.state["0.weight"], state["0.weight"])


def test_imagenet_goes_through_torchvisions_loader_and_cache(tmp_path):
    """A checkpoint in $TORCH_HOME/hub/checkpoints is found by torchvision's own loader."""
    state = random_state(seed=10)
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    _torchvision_file(cache / "vgg19-dcbb9e9d.pth", state)
    loaded = load_weights("imagenet")
    assert loaded.source == "imagenet" and loaded.warning is None
    assert torch.equal(loaded.state["32.weight"], state["32.weight"])
    assert load_weights("auto").source == "imagenet"


def test_imagenet_unavailable_says_how_to_provide_the_file():
    with pytest.raises(WeightsError) as caught:
        load_weights("imagenet")
    message = str(caught.value)
    assert "IMPASTO_VGG_WEIGHTS" in message and "vgg19-dcbb9e9d.pth" in message
    assert "\n" not in message


def test_auto_falls_back_to_random_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        loaded = load_weights("auto")
    assert loaded.source == "random"
    assert "RANDOM" in loaded.warning
    assert any("RANDOM" in record.getMessage() and record.levelno == logging.WARNING for record in caplog.records)


def test_auto_does_not_hide_a_broken_named_or_cached_file(tmp_path, monkeypatch):
    """Only missing weights fall back to random; a file someone provided must work or fail."""
    (tmp_path / "broken.pth").write_bytes(b"garbage")
    monkeypatch.setenv("IMPASTO_VGG_WEIGHTS", str(tmp_path / "broken.pth"))
    with pytest.raises(WeightsError, match="is not a PyTorch state dict"):
        load_weights("auto")
    monkeypatch.setenv("IMPASTO_VGG_WEIGHTS", str(tmp_path / "absent.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights("auto")
    monkeypatch.delenv("IMPASTO_VGG_WEIGHTS")
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "vgg19-dcbb9e9d.pth").write_bytes(b"truncated download")
    with pytest.raises(WeightsError, match="cached weights .* are corrupt"):
        load_weights("auto")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"not a pickle at all", "is not a PyTorch state dict"),
        (b"", "is not a PyTorch state dict"),
    ],
)
def test_malformed_file_is_a_clear_error(tmp_path, content, expected):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=expected):
        load_weights(str(path))


def test_wrong_shapes_and_missing_tensors_are_clear_errors(tmp_path):
    state = random_state()
    state["0.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"0.weight has shape \(32, 3, 3, 3\) but VGG-19 needs \(64, 3, 3, 3\)"):
        load_weights(str(tmp_path / "shape.pth"))
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="has no tensor 'features.0.bias'"):
        load_weights(str(tmp_path / "missing.pth"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        load_weights(str(tmp_path / "list.pth"))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(str(tmp_path / "nope.pth"))


def test_channels_last_features_and_pixel_gradients_match_torchvision(random_weights):
    """The network runs channels-last (faster convolutions); values and gradients are NCHW's."""
    layers = ["conv1_1", "conv3_1", "conv4_2"]
    net = VGGFeatures(random_weights, layers, pooling="avg")
    reference = make_layers(cfgs["E"])[: LAYER_NAMES.index("conv4_2") + 1]
    reference.load_state_dict({k: v for k, v in random_weights.state.items() if int(k.split(".")[0]) < len(reference)})
    reference = nn.Sequential(
        *(
            nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) else nn.ReLU() if isinstance(m, nn.ReLU) else m
            for m in reference
        )
    )
    reference.requires_grad_(False)
    image = torch.rand(1, 3, 48, 40)
    ours, theirs = image.clone().requires_grad_(True), image.clone().requires_grad_(True)
    features = net(ours)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features.values())
    x, expected = (theirs - net.mean) / net.std, {}
    for name, layer in zip(LAYER_NAMES, reference):
        x = layer(x)
        if name in layers:
            expected[name] = x
    for name in layers:
        assert torch.allclose(features[name], expected[name], rtol=1e-4, atol=1e-4), name
    sum(f.square().mean() for f in features.values()).backward()
    sum(f.square().mean() for f in expected.values()).backward()
    assert torch.allclose(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6 * theirs.grad.abs().max())
