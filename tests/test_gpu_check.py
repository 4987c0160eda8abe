"""bench/gpu_check.py where there is no GPU: its one-line answer, and a CPU dry run of every
step (tiny sizes, a real redis-server, SQLite, `impasto web` and `impasto worker`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.params import StyleParams

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
STEPS = ("device", "cuda-tests", "engine", "memory", "pictures", "service")


def gpu_check(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    # CUDA_VISIBLE_DEVICES="": no GPU, even on a machine that has one.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path):
    run = gpu_check("--out", str(tmp_path / "check"), timeout=120)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 1 and run.stdout.startswith("no GPU"), run.stdout
    assert not (tmp_path / "check").exists()


# About two minutes on an idle 2-core machine; five with other work on it (ten processes import torch).
@pytest.mark.timeout(900)
def test_a_cpu_dry_run_goes_through_every_step(tmp_path):
    out = tmp_path / "check"
    run = gpu_check("--cpu-dry-run", "--out", str(out), "--budget", "840", timeout=870)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    statuses = {name: step["status"] for name, step in report["steps"].items()}
    expected = dict.fromkeys(STEPS, "ok")
    if "precision" not in StyleParams.model_fields:  # `impasto stylize --precision` is not there yet
        expected["pictures"] = "skipped"
    assert statuses == expected, json.dumps(report["steps"], indent=1)[-4000:]

    steps = report["steps"]
    assert steps["device"]["device"] == "cpu" and steps["device"]["matmul_peak_gflops"]["fp32"] > 0
    assert steps["cuda-tests"]["counts"].get("skipped", 0) >= 4 and "failed" not in steps["cuda-tests"]["counts"]
    assert all(row["ms"] > 0 and row["size"] == 64 for row in steps["engine"]["rows"])
    assert all(row["peak_gib"] > 0 for row in steps["memory"]["rows"])
    if expected["pictures"] == "ok":
        assert steps["pictures"]["psnr_db"] > 10
    assert steps["service"]["jobs"] == 4 and steps["service"]["jobs_per_minute"] > 0
    table = (out / "gpu_check.md").read_text()
    assert table.split("\n", 2)[2] in run.stdout  # the table it printed, under its title
    assert table.count("\n| ") >= len(STEPS)
