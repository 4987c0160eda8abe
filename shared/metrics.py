"""The service's figures for Prometheus: workers record them in Redis, any web process reads them.

Workers add each finished job to two histograms (its duration, its iterations per second) and
write a heartbeat every WORKER_HEARTBEAT_S (device, GPU memory, the job it runs). The counts
live in Redis hashes, so every web process on every machine serves the same monotonic figures
(a Redis restart empties them: Prometheus takes that as a counter reset). `render` adds what
SQL and the broker hold now (jobs by state, messages waiting per queue) and has prometheus_client
write the lot in Prometheus's text format, version 0.0.4.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import FINAL_STATUSES, STATUSES, Job
from .settings import Settings
from .tasks import queue_keys

# The text format generate_latest writes (prometheus_client's CONTENT_TYPE_PLAIN_0_0_4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A pool process writes its heartbeat this often; one silent for WORKER_SILENT_S is dropped.
WORKER_HEARTBEAT_S = 10
WORKER_SILENT_S = 600


class MetricsUnavailable(RuntimeError):
    """Redis could not be reached to record or read the figures."""


@dataclass(frozen=True)
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]  # upper bounds, rising; +Inf is implied


# From a 64 px preview on a CPU (a few seconds) to a large job near the default time limit.
JOB_DURATION = Histogram(
    "impasto_job_duration_seconds",
    "Seconds from a worker's claim of a job to its end (succeeded, failed or canceled).",
    (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
# From a 2048 px job on a CPU to a small one on a fast GPU.
ITERATIONS_PER_SECOND = Histogram(
    "impasto_job_iterations_per_second",
    "Optimizer iterations a job's attempt made per second of its duration (attempts that made none are left out).",
    (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250),
)


def _key(namespace: str, what: str) -> str:
    # One deployment's keys apart from another's on the same Redis, as the rate limiter's are.
    return f"impasto:{namespace}:metrics:{what}"


class Recorder:
    """The workers' side: adds to the histograms and writes heartbeats, in Redis."""

    def __init__(self, client: redis.Redis, namespace: str):
        self.client = client
        self.namespace = namespace

    @classmethod
    def from_settings(cls, settings: Settings) -> Recorder:
        client = redis.Redis.from_url(settings.require_broker(), socket_timeout=5, socket_connect_timeout=2)
        return cls(client, settings.queue)

    def observe_job(self, *, status: str, queue: str, seconds: float, iterations_per_second: float | None) -> None:
        """Count one finished job: both histograms move together (one MULTI/EXEC)."""
        pipe = self.client.pipeline(transaction=True)
        _observe(pipe, _key(self.namespace, JOB_DURATION.name), JOB_DURATION, (status, queue), seconds)
        if iterations_per_second is not None:
            _observe(
                pipe,
                _key(self.namespace, ITERATIONS_PER_SECOND.name),
                ITERATIONS_PER_SECOND,
                (status, queue),
                iterations_per_second,
            )
        self._run(pipe.execute)

    def worker_heartbeat(
        self,
        name: str,
        *,
        node: str | None,
        device: str,
        gpu_memory_allocated: int,
        gpu_memory_reserved: int,
        gpu_memory_total: int,
        job: str | None,
    ) -> None:
        """Say that the pool process `name` is alive now, on `device`, running `job` (None: idle).
        `node` is its Celery worker's name (what Flower lists)."""
        entry = {
            "time": time.time(),
            "node": node,
            "device": device,
            "job": job,
            "gpu_memory_allocated": gpu_memory_allocated,
            "gpu_memory_reserved": gpu_memory_reserved,
            "gpu_memory_total": gpu_memory_total,
        }
        self._run(lambda: self.client.hset(_key(self.namespace, "workers"), name, json.dumps(entry)))

    def forget_workers(self, *, name: str | None = None, node: str | None = None) -> None:
        """Drop the heartbeat of pool process `name`, or of every pool process of Celery worker
        `node`: they stopped on purpose, so no alert should wait for them."""
        key = _key(self.namespace, "workers")
        if not (name or node):
            return

        def forget() -> None:
            names = (
                [name]
                if name
                else [
                    field
                    for field, entry in _entries(self.client.hgetall(key))
                    if entry is not None and entry.get("node") == node
                ]
            )
            if names:
                self.client.hdel(key, *names)

        self._run(forget)

    @staticmethod
    def _run(call: Any) -> Any:
        try:
            return call()
        except redis.RedisError as err:
            raise MetricsUnavailable(str(err)) from err


def _observe(pipe: Any, key: str, histogram: Histogram, labels: tuple[str, str], value: float) -> None:
    # Each bucket counts the values that fall in it alone; render() adds them up to Prometheus's
    # cumulative buckets, so a change of bounds never mixes two meanings under one field.
    bound = next((b for b in histogram.buckets if value <= b), math.inf)
    pipe.hincrby(key, _field(*labels, _bound_field(float(bound))), 1)
    pipe.hincrbyfloat(key, _field(*labels, "sum"), value)


def _field(status: str, queue: str, slot: str) -> str:
    return json.dumps([status, queue, slot])


def _entries(raw: dict[bytes, bytes]) -> Iterable[tuple[str, dict[str, Any] | None]]:
    for field, value in raw.items():
        try:
            entry = json.loads(value)
        except ValueError:
            entry = None
        yield field.decode(), entry if isinstance(entry, dict) else None


# --- The reading side: one scrape. ----------------------------------------------------------


def render(session: Session, client: redis.Redis, settings: Settings, *, now: float | None = None) -> str:
    """Every figure in Prometheus's text format, written by prometheus_client. MetricsUnavailable
    when Redis cannot be reached; a database outage raises SQLAlchemy's error."""
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    now = time.time() if now is None else now
    try:
        depths = _queue_depths(client, settings.queues)
        durations = client.hgetall(_key(settings.queue, JOB_DURATION.name))
        rates = client.hgetall(_key(settings.queue, ITERATIONS_PER_SECOND.name))
        workers = _live_workers(client, _key(settings.queue, "workers"), now)
    except redis.RedisError as err:
        raise MetricsUnavailable(str(err)) from err

    jobs = GaugeMetricFamily("impasto_jobs", "Jobs in the database by state.", labels=["state"])
    for status in STATUSES:
        jobs.add_metric([status], counts.get(status, 0))
    queue_depth = GaugeMetricFamily(
        "impasto_queue_depth",
        "Messages waiting in the broker for a worker, per queue (every priority; taken ones not counted).",
        labels=["queue"],
    )
    for queue, depth in depths.items():
        queue_depth.add_metric([queue], depth)
    expected = [(status, queue) for status in FINAL_STATUSES for queue in settings.queues]
    heartbeat = GaugeMetricFamily(
        "impasto_worker_last_heartbeat_timestamp_seconds",
        "Unix time of a worker pool process's last heartbeat (one every 10 s; silent for 10 minutes: dropped).",
        labels=["worker", "node", "device"],
    )
    memory = GaugeMetricFamily(
        "impasto_worker_gpu_memory_bytes",
        "GPU memory of a worker pool process: allocated by tensors, reserved by PyTorch's caching "
        "allocator, and the device's total (0 on a CPU).",
        labels=["worker", "device", "kind"],
    )
    busy = GaugeMetricFamily(
        "impasto_worker_busy", "1 while a worker pool process runs a job, else 0.", labels=["worker"]
    )
    for name, entry in workers:
        heartbeat.add_metric([name, entry.get("node") or "", entry["device"]], entry["time"])
        for kind in ("allocated", "reserved", "total"):
            memory.add_metric([name, entry["device"], kind], entry.get(f"gpu_memory_{kind}") or 0)
        busy.add_metric([name], int(entry.get("job") is not None))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _Scrape(
            [
                jobs,
                queue_depth,
                _histogram(JOB_DURATION, durations, expected),
                _histogram(ITERATIONS_PER_SECOND, rates, expected),
                heartbeat,
                memory,
                busy,
            ]
        )
    )
    return generate_latest(registry).decode()


class _Scrape(Collector):
    """One scrape's families, built from what SQL and Redis hold now: nothing is kept in this
    process, so every web process answers alike."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


def _queue_depths(client: redis.Redis, queues: Sequence[str]) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(key)
    lengths = iter(pipe.execute())
    return {queue: sum(next(lengths) for _ in queue_keys(queue)) for queue in queues}


def _live_workers(client: redis.Redis, key: str, now: float) -> list[tuple[str, dict[str, Any]]]:
    """The heartbeats of the last WORKER_SILENT_S, by name; older or unreadable ones are deleted."""
    live, dead = [], []
    for name, entry in _entries(client.hgetall(key)):
        if (
            entry is None
            or not isinstance(entry.get("time"), (int, float))
            or not entry.get("device")
            or entry["time"] < now - WORKER_SILENT_S
        ):
            dead.append(name)
        else:
            live.append((name, entry))
    if dead:
        client.hdel(key, *dead)
    return sorted(live)


def _histogram(
    histogram: Histogram, raw: dict[bytes, bytes], expected: Sequence[tuple[str, str]]
) -> HistogramMetricFamily:
    """Cumulative buckets, _sum and _count per (status, queue); the expected label sets appear
    with zeros before their first job, so rates over them are defined from the start."""
    counts: dict[tuple[str, str], dict[float, int]] = {labels: {} for labels in expected}
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for field, value in raw.items():
        try:
            status, queue, slot = json.loads(field)
            if slot == "sum":
                sums[status, queue] = float(value)
            else:
                counts.setdefault((status, queue), {})[float(slot)] = int(value)
        except (TypeError, ValueError):
            continue  # not ours: skipped rather than failing every scrape
    family = HistogramMetricFamily(histogram.name, histogram.help, labels=["status", "queue"])
    for (status, queue), buckets in sorted(counts.items()):
        cumulative = [
            (floatToGoString(bound), sum(count for upper, count in buckets.items() if upper <= bound))
            for bound in (*histogram.buckets, math.inf)
        ]
        family.add_metric([status, queue], cumulative, sums[status, queue])
    return family


def _bound_field(bound: float) -> str:
    """A bucket's bound as its Redis hash field says it (5.0, 2.5, +Inf): kept as it was when the
    text was hand-written, so figures recorded before an upgrade still count."""
    return "+Inf" if math.isinf(bound) else repr(bound)
