"""This process's heartbeat for /metrics: its device, its GPU memory and the job it runs."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from shared.metrics import WORKER_HEARTBEAT_S, MetricsUnavailable

log = logging.getLogger("impasto.worker")


def worker_name() -> str:
    """This process as job rows and log lines name it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class MetricsHeartbeat(threading.Thread):
    """Writes this process's heartbeat for /metrics: its device, its GPU memory and its job."""

    def __init__(self, runner: Any, node: str | None):
        super().__init__(name="metrics-heartbeat", daemon=True)
        assert runner.metrics is not None
        self.runner, self.metrics, self.node = runner, runner.metrics, node
        self.worker = worker_name()  # as on the job rows and in the log lines
        self._done = threading.Event()
        self._wake = threading.Event()
        self._failing = False

    def run(self) -> None:
        device = _device(self.runner.device)
        while not self._done.is_set():
            self.beat(device)
            self._wake.wait(WORKER_HEARTBEAT_S)
            self._wake.clear()

    def poke(self) -> None:
        """Beat now: the process took a job or ended one."""
        self._wake.set()

    def beat(self, device: str) -> None:
        allocated, reserved, total = _gpu_memory(device)
        attempt = self.runner.attempt
        try:
            self.metrics.worker_heartbeat(
                self.worker,
                node=self.node,
                device=device,
                gpu_memory_allocated=allocated,
                gpu_memory_reserved=reserved,
                gpu_memory_total=total,
                job=attempt.job_id if attempt else None,
            )
        except MetricsUnavailable as err:
            if not self._failing:  # one line per outage, not one per beat
                log.warning("event=metrics-heartbeat-failed worker=%s error=%r", self.worker, str(err))
            self._failing = True
        else:
            self._failing = False

    def stop(self) -> None:
        self._done.set()
        self._wake.set()
        self.join(timeout=WORKER_HEARTBEAT_S)  # so that no beat lands after the entry is gone
        try:
            self.metrics.forget_workers(name=self.worker)
        except MetricsUnavailable:
            pass  # the entry is dropped when read, WORKER_SILENT_S after its last beat


def _device(spec: str | None) -> str:
    """The device this process's jobs run on, as `cpu` or `cuda:N`."""
    import torch

    from worker.engine import resolve_device

    device = resolve_device(spec)
    if device.type != "cuda":
        return "cpu"
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"


def _gpu_memory(device: str) -> tuple[int, int, int]:
    """Bytes allocated by tensors, reserved by PyTorch's caching allocator, and the device's total
    (0 on a CPU)."""
    if not device.startswith("cuda"):
        return 0, 0, 0
    import torch

    return (
        torch.cuda.memory_allocated(device),
        torch.cuda.memory_reserved(device),
        torch.cuda.get_device_properties(device).total_memory,
    )
