"""bench/service.py's polling figures: `GET /api/v1/jobs/{id}` by many clients at once while the
worker runs that job. A library module of bench/ (not a package)."""

from __future__ import annotations

import os
import threading
import time

import requests
from service_client import FINAL, Client
from service_stats import summary, table


class Phase:
    """`clients` threads, each with its own connection, GETting one URL until a common stop
    time: back to back (interval 0), or each once every `interval` seconds (an open loop, as
    browsers poll). Each keeps its own latencies and error count."""

    def __init__(self, url: str, clients: int, interval: float):
        self.url, self.clients, self.interval = url, clients, interval
        self.latencies: list[list[float]] = [[] for _ in range(clients)]
        self.errors = [0] * clients
        self.go, self.stop_at = threading.Event(), 0.0

    def client(self, index: int) -> None:
        session = requests.Session()
        self.go.wait()
        next_at = time.monotonic() + self.interval * index / self.clients  # spread the clients over one interval
        while True:
            if self.interval:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += self.interval
            if time.monotonic() >= self.stop_at:
                return
            self.get(session, index)

    def get(self, session: requests.Session, index: int) -> None:
        began = time.perf_counter()
        try:
            ok = session.get(self.url, timeout=10).status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            self.latencies[index].append((time.perf_counter() - began) * 1000)
        else:
            self.errors[index] += 1


def poll_phase(url: str, clients: int, seconds: float, interval: float) -> dict:
    """`clients` threads, each with its own connection, GET `url` for `seconds`: back to back
    (interval 0), or each once every `interval` seconds (an open loop, as browsers poll)."""
    phase = Phase(url, clients, interval)
    threads = [threading.Thread(target=phase.client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    cpu_before = os.times()
    phase.stop_at = time.monotonic() + seconds
    began = time.monotonic()
    phase.go.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    cpu = os.times()
    values = [v for per in phase.latencies for v in per]
    return {
        "clients": clients,
        "interval": interval,
        "seconds": round(elapsed, 1),
        "requests": len(values),
        "errors": sum(phase.errors),
        "rps": len(values) / elapsed,
        "latency_ms": summary(values),
        "client_cpu_cores": (cpu.user - cpu_before.user + cpu.system - cpu_before.system) / elapsed,
    }


def polling(service: Client, clients: int, seconds: float, interval: float) -> dict:
    """Poll one job's JSON while the worker runs that job: one client back to back (the cost of
    one request), `clients` each every `interval` s, and `clients` back to back (saturation)."""
    http = requests.Session()
    job_id, token = service.submit_with_token(http, size=256, iterations=5000)
    service.wait(http, job_id, {"running"}, every=0.05)
    url = f"{service.base}/api/v1/jobs/{job_id}"
    phases = {
        "1 client, back to back": poll_phase(url, 1, seconds / 2, 0),
        f"{clients} clients, each every {interval:g} s": poll_phase(url, clients, seconds, interval),
        f"{clients} clients, back to back": poll_phase(url, clients, seconds, 0),
    }
    progress = http.get(url, timeout=10).json()
    http.post(f"{url}/cancel", headers={"X-Job-Token": token}, timeout=10)
    service.wait(http, job_id, FINAL, every=0.1)
    print_polling(phases, progress)
    return phases


def print_polling(phases: dict[str, dict], progress: dict) -> None:
    table(
        "7. polling GET /api/v1/jobs/{id} while the worker runs that job",
        "ms",
        {name: phase["latency_ms"] for name, phase in phases.items()},
    )
    for name, phase in phases.items():
        print(
            f"{name:34} {phase['rps']:>6.0f} requests/s, {phase['errors']} errors, "
            f"client used {phase['client_cpu_cores']:.2f} CPU cores"
        )
    print(f"the job was {progress['status']} at iteration {progress['progress']['iteration']} afterwards")
    for name, phase in list(phases.items())[1:]:
        p99 = phase["latency_ms"]["p99"]
        print(f"target p99 < 50 ms, {name}: {'met' if p99 < 50 else 'MISSED'} ({p99:.1f} ms)")
