"""`impasto worker --gpus all|0,1,...`: one worker process per GPU, each pinned to its device.

Each child is a plain `impasto worker --device cuda:0 --concurrency 1` whose environment shows
it one GPU (CUDA_VISIBLE_DEVICES), so nothing in it can touch another process's device. This
process only supervises: it passes SIGTERM and SIGINT on (each child hands its running job
back to the queue), and starts again a child that died, after a pause, so that one bad GPU
does not take the machine's other workers with it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("impasto.worker")

# A child that died is started again after this long (a crash loop costs little).
RESTART_DELAY_S = 5.0
# How long the children have, after a stop, to hand their jobs back before they are killed.
STOP_GRACE_S = 120.0


class GpuError(ValueError):
    """--gpus names GPUs this machine does not have; the message says which it has."""


def gpu_count() -> int:
    """CUDA devices on this machine, asked in a separate process: CUDA must not be initialised
    in this one (it forks, and its children pick their own device)."""
    run = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"], capture_output=True, text=True
    )
    try:
        return int(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        log.warning("event=gpu-count-failed error=%r", run.stderr.strip()[-300:])
        return 0


def parse_gpus(value: str, available: int) -> list[int]:
    """`all` or `0,1,...` -> the GPU indices to run a worker on ([] means one CPU worker)."""
    text = value.strip().lower()
    if text == "all":
        return list(range(available))
    try:
        wanted = [int(part) for part in text.split(",")]
    except ValueError:
        raise GpuError(f"--gpus {value!r}: use all, or GPU numbers separated by commas, as 0,1") from None
    if len(set(wanted)) != len(wanted) or any(index < 0 for index in wanted):
        raise GpuError(f"--gpus {value!r}: name each GPU once, by its number (0, 1, ...)")
    missing = [index for index in wanted if index >= available]
    if missing:
        have = f"GPUs 0 to {available - 1}" if available else "no GPU (use --gpus all to run one CPU worker)"
        raise GpuError(f"--gpus {value!r}: there is no GPU {missing[0]}; this machine has {have}")
    return wanted


@dataclass(frozen=True)
class Child:
    """One worker process to keep running: its name, command line and extra environment."""

    name: str
    argv: list[str]
    env: dict[str, str]


def children(gpus: Sequence[int], worker_args: Sequence[str], hostname: str) -> list[Child]:
    """The worker processes for these GPUs: `worker_args` are the options every child shares
    (queues, memory cap, log level); each gets one GPU, concurrency 1 and a name of its own."""
    base = [sys.executable, "-m", "shared.cli", "worker", *worker_args]
    return [
        Child(
            name=f"gpu{index}",
            argv=[*base, "--device", "cuda:0", "--concurrency", "1", "--hostname", f"gpu{index}.{hostname}"],
            env={"CUDA_VISIBLE_DEVICES": str(index), "IMPASTO_GPU_INDEX": str(index)},
        )
        for index in gpus
    ]


def supervise(
    workers: Sequence[Child], restart_delay: float = RESTART_DELAY_S, stop_grace: float = STOP_GRACE_S
) -> int:
    """Run `workers` until SIGTERM or SIGINT, starting again any that dies; returns 0 after a
    clean stop. The signal is passed to every child, which hands its job back and exits."""
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    running: dict[str, subprocess.Popen[bytes]] = {}
    died_at: dict[str, float] = {}
    try:
        while not stopping:
            for child in workers:
                process = running.get(child.name)
                if process is not None and process.poll() is None:
                    continue
                if process is not None:
                    log.warning(
                        "event=worker-exited child=%s pid=%d code=%s; starting it again in %.0f s",
                        child.name,
                        process.pid,
                        process.returncode,
                        restart_delay,
                    )
                    died_at[child.name] = time.monotonic()
                    del running[child.name]
                if time.monotonic() - died_at.get(child.name, -restart_delay) < restart_delay:
                    continue
                # Its own session: a Ctrl-C at the terminal reaches the children only through us,
                # once, rather than twice (once from the terminal, once passed on).
                running[child.name] = subprocess.Popen(
                    child.argv, env={**os.environ, **child.env}, start_new_session=True
                )
                log.info("event=worker-started child=%s pid=%d", child.name, running[child.name].pid)
            time.sleep(0.2)
        log.info("event=stopping children=%d", len(running))
        for process in running.values():
            if process.poll() is None:
                process.send_signal(stopping[0])
        deadline = time.monotonic() + stop_grace
        for process in running.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("event=worker-killed pid=%d reason=no-exit-after-stop", process.pid)
                process.kill()
                process.wait()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
