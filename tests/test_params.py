"""The parameters model: defaults, limits, and the flags derived from it."""

import argparse

import pytest

from shared.flags import ParamsError, add_model_flags, params_from_args
from shared.params import VGG19_LAYERS, StyleParams


def test_defaults_read_the_rectified_outputs_as_the_reference_implementations_do():
    params = StyleParams()
    assert params.content_layers == ("relu4_2",)
    assert params.style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert params.pooling == "avg" and params.optimizer == "lbfgs" and params.init == "content"
    assert params.style_layer_weights == (256.0, 64.0, 16.0, 4.0, 1.0)
    assert params.precision == "auto"
    assert params.learning_rate == 1.0
    assert StyleParams(optimizer="adam").learning_rate == 0.02


def test_layer_names():
    assert len(VGG19_LAYERS) == 37 and VGG19_LAYERS[-1] == "pool5"
    assert VGG19_LAYERS.index("relu4_2") == 22


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("size", 0, "greater than or equal to 16"),
        ("size", 100_000, "less than or equal to 8192"),
        ("iterations", 0, "greater than or equal to 1"),
        ("style_weight", -1.0, "greater than or equal to 0"),
        ("content_weight", float("nan"), "finite number"),
        ("tv_weight", float("inf"), "finite number"),
        ("learning_rate", 0.0, "greater than 0"),
        ("style_scale", 0.0, "greater than or equal to 0.1"),
        ("optimizer", "sgd", "'lbfgs' or 'adam'"),
        ("preserve_colors", "sepia", "'none', 'luminance' or 'histogram'"),
        ("content_layers", ("conv6_1",), "unknown VGG-19 layer 'conv6_1'"),
        ("style_layers", ("conv1_1", "conv1_1"), "a layer is named twice"),
        ("style_layers", (), "at least 1 item"),
        ("style_layer_weights", (1.0, 2.0), "2 numbers for 5 style layers"),
        ("style_layer_weights", (1.0, -1.0, 1.0, 1.0, 1.0), "finite number >= 0"),
        ("style_blend", (0.0, 0.0), "at least one weight must be positive"),
        ("size", "big", "valid integer"),
        ("colour", "red", "Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_refused_naming_the_problem(field, value, message):
    with pytest.raises(ValueError, match=message):
        StyleParams(**{field: value})


def test_blend_is_normalised_and_counted():
    assert StyleParams().style_blend_for(4) == (0.25,) * 4
    assert StyleParams(style_blend=(1.0, 3.0)).style_blend_for(2) == (0.25, 0.75)
    with pytest.raises(ValueError, match="3 numbers for 2 style images"):
        StyleParams(style_blend=(1.0, 1.0, 1.0)).style_blend_for(2)


def test_flags_are_derived_from_the_model():
    parser = argparse.ArgumentParser()
    add_model_flags(parser, StyleParams)
    args = parser.parse_args(
        [
            "--size",
            "256",
            "--style-layers",
            "relu1_1",
            "relu2_1",
            "--preserve-colors",
            "luminance",
            "--style-blend",
            "1",
            "2",
        ]
    )
    params = params_from_args(StyleParams, args)
    assert params.size == 256 and params.style_layers == ("relu1_1", "relu2_1")
    assert params.style_layer_weights == (4.0, 1.0)  # each layer 4x the next deeper one
    assert params.preserve_colors == "luminance" and params.style_blend == (1.0, 2.0)
    assert params.iterations == StyleParams().iterations  # unset flags keep the model's default
    with pytest.raises(ParamsError, match="^--iterations: Input should be greater than or equal to 1$"):
        params_from_args(StyleParams, parser.parse_args(["--iterations", "0"]))
