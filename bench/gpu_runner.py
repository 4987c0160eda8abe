"""How bench/gpu_check.py runs its steps: each with its share of the time, its output in a log,
and a failure recorded rather than stopping the others. A library module of bench/ (not a
package); standard library only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class StepFailed(RuntimeError):
    """A step could not give its figures; the message says why."""


class StepSkipped(RuntimeError):
    """A step that this tree cannot run yet; the message says why."""


class Check:
    """The steps' shared state: where logs go, the environment, the time left."""

    def __init__(self, out: Path, env: dict[str, str], dry_run: bool, budget: float):
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.dry_run = dry_run
        self.kind = "cpu" if dry_run else "gpu"
        self.device = "cpu" if dry_run else "cuda"
        self.deadline = time.monotonic() + budget
        self.results: dict[str, dict] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: list[str], limit: float) -> str:
        """Run `command` (its output in logs/NAME.log) for at most `limit` s or the time left;
        its output, or StepFailed."""
        timeout = min(limit, self.left())
        if timeout < 5:
            raise StepFailed("no time left")
        log = self.logs / f"{name}.log"
        with open(log, "w") as out:
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(process)
                raise StepFailed(f"timed out after {timeout:.0f} s; see logs/{log.name}") from None
        text = log.read_text()
        if process.returncode != 0:
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise StepFailed(f"exit {process.returncode}: {tail[-400:]} (logs/{log.name})")
        return text

    def step(self, name: str, function: Callable[[], dict]) -> None:
        began = time.monotonic()
        print(f"# {name} ...", file=sys.stderr, flush=True)
        try:
            result = {"status": "ok", **function()}
        except StepFailed as err:
            result = {"status": "failed", "error": str(err)}
        except StepSkipped as err:
            result = {"status": "skipped", "error": str(err)}
        except Exception as err:  # a bug or a missing package: recorded, and the next step runs
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        result["seconds"] = round(time.monotonic() - began, 1)
        self.results[name] = result
        print(f"# {name}: {result['status']} in {result['seconds']} s {result.get('error', '')}", file=sys.stderr)


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def json_lines(text: str) -> list[dict]:
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
    return found


def takes_precision(script: str) -> bool:
    """Whether a bench script has --precision yet (read from its source: --help would cost a
    torch import)."""
    return '"--precision"' in (REPO_ROOT / script).read_text()
