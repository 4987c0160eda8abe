"""The engine on a CUDA GPU (issue 12, section 4): `pytest -m cuda` runs these, and so does
bench/gpu_check.py. Where torch sees no CUDA device each one is skipped, saying so."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from shared.params import StyleParams
from tests.conftest import DATA, make_content, make_style

# Asked at collection, before conftest's `offline` fixture hides the GPU (CUDA_VISIBLE_DEVICES="")
# from anything started later: CUDA reads that variable once, when a process first uses it.
HAS_CUDA = torch.cuda.is_available()

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """conftest's `offline`, but the GPU stays visible: it is what these tests are about."""
    monkeypatch.setenv("IMPASTO_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("IMPASTO_VGG_WEIGHTS", raising=False)


def paint(device: str, weights, **overrides):
    """A short, seeded run of the engine on `device`; its Result."""
    from worker.engine import Result, stylize

    settings = {"size": 96, "iterations": 12, "scales": 1, "weights": "random", "seed": 0, **overrides}
    events = list(
        stylize(make_content(96, 72), [make_style(96, 96)], StyleParams(**settings), device=device, weights=weights)
    )
    assert isinstance(events[-1], Result)
    return events[-1]


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_engine_runs_on_cuda_in_each_precision(random_weights, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("needs a CUDA GPU with bfloat16")
    torch.cuda.reset_peak_memory_stats()
    result = paint("cuda", random_weights, precision=precision)
    assert result.device.startswith("cuda") and result.precision == precision
    assert not result.canceled and result.iterations == 12
    assert np.isfinite(result.losses.total) and result.losses.total < result.initial_losses.total
    assert torch.cuda.max_memory_allocated() > 0  # it ran on the GPU, not beside it


def test_cuda_paints_what_the_cpu_paints(random_weights):
    """fp32 on both: the first loss agrees closely (cuDNN may run the convolutions in TF32, hence
    1e-2), and a few L-BFGS iterations later the pictures still agree within a few levels."""
    cpu = paint("cpu", random_weights, precision="fp32", iterations=5)
    cuda = paint("cuda", random_weights, precision="fp32", iterations=5)
    assert cuda.initial_losses.total == pytest.approx(cpu.initial_losses.total, rel=1e-2)
    assert cuda.losses.total == pytest.approx(cpu.losses.total, rel=5e-2)
    difference = np.abs(pixels(cuda.image) - pixels(cpu.image))
    assert difference.mean() < 2 / 255, difference.mean()


def test_the_command_line_paints_on_cuda_in_bf16(tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("needs a CUDA GPU with bfloat16")
    output = tmp_path / "out.png"
    run = subprocess.run(
        [sys.executable, "-m", "shared.cli", "stylize", str(DATA / "tubingen.jpg"), str(DATA / "starry_night.jpg")]
        + ["-o", str(output), "--size", "128", "--iterations", "10", "--weights", "random"]
        + ["--device", "cuda", "--precision", "bf16", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["device"].startswith("cuda") and result["params"]["precision"] == "bf16"
    assert output.stat().st_size > 0
