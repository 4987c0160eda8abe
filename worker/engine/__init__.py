"""The style-transfer engine: a pure torch library, no files, no database, no Celery."""

from .errors import EngineError, WeightsError
from .optimize import Event, Losses, Progress, Result, Resume, Snapshot, StyleObjective, resolve_device, stylize
from .vgg import LAYER_NAMES, LoadedWeights, VGGFeatures, load_weights

__all__ = [
    "LAYER_NAMES",
    "EngineError",
    "Event",
    "LoadedWeights",
    "Losses",
    "Progress",
    "Result",
    "Resume",
    "Snapshot",
    "StyleObjective",
    "VGGFeatures",
    "WeightsError",
    "load_weights",
    "resolve_device",
    "stylize",
]
