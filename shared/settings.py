"""Service settings, read once from the environment, with defaults that run on one machine.

`load_settings()` is called by each entry point (`impasto web`, `impasto worker`, `impasto db`,
`impasto up`) and the result is passed down; nothing reads the environment at import time.
A bad value raises SettingsError with one line that names the variable and what to fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    # None: no broker given; `impasto up` starts a Redis and fills this in for its children.
    broker_url: str | None
    storage_url: str
    queue: str  # the prefix of the queues' names
    # Queues per device class: a job goes to the CPU queue when its size is at most
    # cpu_max_size (small previews), else to the GPU queue (0: every job to the GPU queue).
    gpu_queue: str
    cpu_queue: str
    cpu_max_size: int
    max_upload_bytes: int  # per request, all files together
    max_pixels: int  # per uploaded image, checked from the header before decoding
    max_size: int  # the largest output long side a job may ask for
    max_iterations: int
    max_styles: int
    max_snapshots: int  # per job: each is a PNG in storage and a row
    max_frames: int  # per clip (shared/video.py), checked before any work
    segment_frames: int  # a clip is cut into segments of this many frames, run by workers at once
    segment_overlap: int  # frames a segment paints before its first, faded into its predecessor's
    max_sweep_cells: int  # jobs one sweep may make
    job_time_limit: int  # seconds; past it a job is stopped (soft limit) then killed (hard limit)
    strict_weights: bool  # refuse to fall back to random VGG-19 weights
    s3_endpoint_url: str | None  # for S3-compatible servers (MinIO, Ceph, moto)
    # How the web serves images kept in S3: "redirect" to a presigned URL (signed for
    # s3_public_endpoint_url when browsers reach the server at another address) or "stream".
    s3_downloads: str
    s3_public_endpoint_url: str | None
    s3_url_expiry: int  # seconds a presigned URL is valid
    # Reliability: a running job whose heartbeat is older than the lease has lost its worker.
    job_lease: int  # seconds
    max_attempts: int  # the times a job's worker may be lost; the last ends it failed with `worker_lost`
    reconcile_interval: int  # seconds between reconciler (and cleanup) passes
    enqueue_grace: int  # seconds a queued job may be missing from the broker before it is re-sent
    db_retry: int  # seconds a worker keeps retrying a database write before it gives up
    retention: int  # seconds a finished job's images and row are kept; 0: forever
    # Security: anonymous job submissions per client address per hour (0: no limit); whether
    # every API submission needs a key; how many proxies in front set X-Forwarded-For.
    anonymous_jobs_per_hour: int
    require_api_key: bool
    trusted_proxies: int
    # Signs the browser's cookie and its CSRF tokens; the same in every web process. None: not
    # set (`impasto web` refuses to start; `impasto up` generates one into the data folder).
    secret_key: str | None = None
    # Seconds one event stream (a live job page) lasts before the server ends it with a
    # `reconnect` event, so that threads and proxies see streams come and go.
    event_stream_limit: float = 120.0

    def with_broker(self, broker_url: str) -> Settings:
        return replace(self, broker_url=broker_url)

    @property
    def queues(self) -> tuple[str, str]:
        """Every queue a job may be sent to: the GPU queue, then the CPU queue."""
        return (self.gpu_queue, self.cpu_queue)

    def queue_for(self, size: int) -> str:
        """The queue a job of this output size goes to."""
        return self.cpu_queue if size <= self.cpu_max_size else self.gpu_queue

    def require_broker(self) -> str:
        if not self.broker_url:
            raise SettingsError(
                "IMPASTO_BROKER_URL is not set: give the Redis URL (redis://HOST:6379/0), "
                "or run `impasto up`, which starts one"
            )
        return self.broker_url


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Parse the IMPASTO_* variables (default: os.environ); `overrides` win (command-line flags)."""
    env = os.environ if environ is None else environ
    data_dir = Path(str(overrides.pop("data_dir", None) or env.get("IMPASTO_DATA_DIR") or "data")).resolve()
    queue = _text(env, "IMPASTO_QUEUE", "impasto")
    settings = Settings(
        data_dir=data_dir,
        database_url=_url(
            env,
            "IMPASTO_DATABASE_URL",
            f"sqlite:///{data_dir / 'impasto.db'}",
            ("sqlite", "postgresql", "postgresql+psycopg"),
        ),
        broker_url=_url(env, "IMPASTO_BROKER_URL", None, ("redis", "rediss")),
        storage_url=_storage_url(env, data_dir),
        queue=queue,
        gpu_queue=_text(env, "IMPASTO_GPU_QUEUE", f"{queue}.gpu"),
        cpu_queue=_text(env, "IMPASTO_CPU_QUEUE", f"{queue}.cpu"),
        cpu_max_size=_int(env, "IMPASTO_CPU_MAX_SIZE", 256, 0),
        max_upload_bytes=_int(env, "IMPASTO_MAX_UPLOAD_BYTES", 32 * 1024 * 1024, 1024),
        max_pixels=_int(env, "IMPASTO_MAX_PIXELS", 40_000_000, 64),
        max_size=_int(env, "IMPASTO_MAX_SIZE", 2048, 16, 8192),
        max_iterations=_int(env, "IMPASTO_MAX_ITERATIONS", 5000, 1, 100_000),
        max_styles=_int(env, "IMPASTO_MAX_STYLES", 5, 1, 64),
        max_snapshots=_int(env, "IMPASTO_MAX_SNAPSHOTS", 100, 1, 10_000),
        max_frames=_int(env, "IMPASTO_MAX_FRAMES", 600, 1, 100_000),
        segment_frames=_int(env, "IMPASTO_SEGMENT_FRAMES", 24, 1, 100_000),
        segment_overlap=_int(env, "IMPASTO_SEGMENT_OVERLAP", 2, 0, 100),
        max_sweep_cells=_int(env, "IMPASTO_MAX_SWEEP_CELLS", 25, 1, 400),
        job_time_limit=_int(env, "IMPASTO_JOB_TIME_LIMIT", 3600, 10),
        strict_weights=_bool(env, "IMPASTO_STRICT_WEIGHTS", False),
        s3_endpoint_url=_url(env, "IMPASTO_S3_ENDPOINT_URL", None, ("http", "https")),
        s3_downloads=_choice(env, "IMPASTO_S3_DOWNLOADS", "redirect", ("redirect", "stream")),
        s3_public_endpoint_url=_url(env, "IMPASTO_S3_PUBLIC_ENDPOINT_URL", None, ("http", "https")),
        s3_url_expiry=_int(env, "IMPASTO_S3_URL_EXPIRY", 3600, 10, 7 * 24 * 3600),
        job_lease=_int(env, "IMPASTO_JOB_LEASE", 60, 2),
        max_attempts=_int(env, "IMPASTO_MAX_ATTEMPTS", 3, 1, 100),
        reconcile_interval=_int(env, "IMPASTO_RECONCILE_INTERVAL", 15, 1),
        enqueue_grace=_int(env, "IMPASTO_ENQUEUE_GRACE", 30, 0),
        db_retry=_int(env, "IMPASTO_DB_RETRY", 120, 0),
        retention=_int(env, "IMPASTO_RETENTION", 7 * 24 * 3600, 0),
        anonymous_jobs_per_hour=_int(env, "IMPASTO_ANONYMOUS_JOBS_PER_HOUR", 60, 0),
        require_api_key=_bool(env, "IMPASTO_REQUIRE_API_KEY", False),
        trusted_proxies=_int(env, "IMPASTO_TRUSTED_PROXIES", 0, 0, 10),
        secret_key=_secret(env, "IMPASTO_SECRET_KEY"),
        event_stream_limit=_seconds(env, "IMPASTO_EVENT_STREAM_LIMIT", 120.0, 0.05, 3600),
    )
    return replace(settings, **overrides) if overrides else settings


def _url(env: Mapping[str, str], name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return default
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        raise SettingsError(f"{name}={value!r}: expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
    return value


def _storage_url(env: Mapping[str, str], data_dir: Path) -> str:
    value = env.get("IMPASTO_STORAGE_URL", "").strip()
    if not value:
        return (data_dir / "storage").as_uri()
    parts = urlsplit(value)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise SettingsError(f"IMPASTO_STORAGE_URL={value!r}: name the bucket, as in s3://BUCKET/PREFIX")
        return value
    if parts.scheme == "file":
        return value
    if parts.scheme == "" and value:
        return Path(value).resolve().as_uri()  # a plain folder path
    raise SettingsError(f"IMPASTO_STORAGE_URL={value!r}: use a folder path, file:///PATH or s3://BUCKET/PREFIX")


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not value.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise SettingsError(f"{name}={value!r}: use letters, digits, '-', '_' and '.' only")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name}={value!r}: expected {' or '.join(choices)}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SettingsError(f"{name}={raw!r}: must be {bounds}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r}: expected 1 or 0 (true or false)")


def _secret(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if len(value) < 32:
        raise SettingsError(
            f"{name} is {len(value)} characters: use at least 32 random ones "
            f'(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return value


def _seconds(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number of seconds") from None
    if not low <= value <= high:  # NaN fails this too
        raise SettingsError(f"{name}={raw!r}: must be between {low:g} and {high:g} seconds")
    return value
