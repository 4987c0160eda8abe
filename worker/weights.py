"""VGG-19 weights in a worker process: loaded when a job first needs them (or at the pool
process's start, from this machine's disk only), kept by spec for the process's life."""

from __future__ import annotations

import logging
from typing import Any

from shared.params import WEIGHT_CHOICES

from .failures import JobFailed

log = logging.getLogger("impasto.worker")


def weights_for_job(loaded_weights: dict[str, Any], spec: str, *, strict: bool) -> Any:
    """The weights a job asks for, loaded when a job first needs them: a job with `random`
    never waits on an ImageNet download. Those that cannot be had fail the job with
    `weights_unavailable`."""
    from worker.engine import WeightsError, load_weights

    if spec not in WEIGHT_CHOICES:  # a job never names a file for the worker to read
        raise JobFailed("bad_parameters", f"weights must be one of {', '.join(WEIGHT_CHOICES)}")
    if strict and spec == "auto":
        spec = "imagenet"  # production: never a silent fallback to random weights
    if spec in loaded_weights:
        return loaded_weights[spec]
    try:
        loaded = load_weights(spec)
    except WeightsError as err:
        raise JobFailed("weights_unavailable", str(err)) from None
    if not (spec == "auto" and loaded.source == "random"):  # a fallback is tried again next time
        loaded_weights[spec] = loaded
    return loaded


def preload_weights(loaded_weights: dict[str, Any], spec: str, *, strict: bool) -> None:
    """At a pool process's start, load the ImageNet weights `spec` may use if they are on this
    machine (a named file, or torchvision's cache), so that the first job does not wait. Never
    a download: only a job that asks for these weights may start one. A file that is there but
    unreadable is logged once, with its reason; jobs that need it fail with `weights_unavailable`."""
    from worker.engine import WeightsError, load_weights
    from worker.engine.errors import WeightsUnavailable

    if spec == "random" or spec not in WEIGHT_CHOICES:
        return
    try:
        loaded = load_weights("imagenet", offline=True)
    except WeightsUnavailable as err:  # nothing here to load: the first job that needs them does
        log.info("event=weights-deferred reason=%r", str(err))
        return
    except WeightsError as err:
        log.error("event=weights-unavailable spec=%s reason=%r", spec, str(err))
        return
    loaded_weights["imagenet"] = loaded
    if not strict or spec == "imagenet":
        loaded_weights[spec] = loaded
    log.info("event=weights-loaded source=%s", loaded.source)
