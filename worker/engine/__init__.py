"""The style-transfer engine: a pure torch library, no files, no database, no Celery."""

from .errors import EngineError, WeightsError
from .events import Event, Losses, Progress, Result, Resume, Snapshot
from .objective import PRECISIONS, StyleObjective, resolve_precision
from .optimize import resolve_device, stylize
from .targets import TargetCache
from .vgg import LAYER_NAMES, LoadedWeights, VGGFeatures, load_weights

__all__ = [
    "LAYER_NAMES",
    "EngineError",
    "Event",
    "LoadedWeights",
    "PRECISIONS",
    "Losses",
    "Progress",
    "Result",
    "Resume",
    "Snapshot",
    "StyleObjective",
    "TargetCache",
    "VGGFeatures",
    "WeightsError",
    "load_weights",
    "resolve_device",
    "resolve_precision",
    "stylize",
]
