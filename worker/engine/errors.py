"""The engine's exceptions: each carries a message a person can act on."""


class EngineError(ValueError):
    """Input the engine cannot work with; the message says what to fix."""


class WeightsError(EngineError):
    """VGG-19 weights that cannot be had, or a file that does not hold them."""


class WeightsUnavailable(WeightsError):
    """The ImageNet weights are neither named, cached nor downloadable; `auto` falls back."""
