"""`impasto stylize` as a person runs it: a real process, real files, real signals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import PAINTING, PHOTO, load
from PIL import Image

from shared.params import StyleParams


def impasto(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or os.environ.copy(),
        timeout=240,
        **kwargs,
    )


def test_stylize_prints_the_promised_json(tmp_path):
    out = tmp_path / "out.png"
    done = impasto(
        "stylize", PHOTO, PAINTING, "-o", out, "--size", 64, "--iterations", 12, "--weights", "random", "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["output"] == str(out.resolve())
    assert report["size"] == [64, 48] and load(out).size == (64, 48)
    assert report["iterations"] == 12 and report["seconds"] > 0
    assert report["weights"] == "random" and report["device"] == "cpu"
    for key in ("losses", "initial_losses"):
        assert set(report[key]) == {"content", "style", "tv", "total"}
    assert report["losses"]["total"] < 0.2 * report["initial_losses"]["total"]
    assert "Traceback" not in done.stderr


def test_auto_weights_fall_back_with_an_unmissable_warning(tmp_path):
    done = impasto("stylize", PHOTO, PAINTING, "-o", tmp_path / "o.png", "--size", 32, "--iterations", 2, "--json")
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "RANDOM weights" in done.stderr
    report = json.loads(done.stdout)
    assert report["weights"] == "random" and "RANDOM" in report["weights_warning"]


def test_snapshots_are_written_where_asked(tmp_path):
    done = impasto(
        "stylize",
        PHOTO,
        PAINTING,
        "-o",
        tmp_path / "o.jpg",
        "--size",
        32,
        "--iterations",
        6,
        "--weights",
        "random",
        "--snapshot-every",
        2,
        "--snapshot-dir",
        tmp_path / "snaps",
        "--scales",
        1,
    )
    assert done.returncode == 0, done.stderr
    names = sorted(os.listdir(tmp_path / "snaps"))
    assert names == ["snapshot_00002.png", "snapshot_00004.png", "snapshot_00006.png"]
    with Image.open(tmp_path / "o.jpg") as written:
        assert written.format == "JPEG"


def test_ctrl_c_saves_the_current_image(tmp_path):
    out, snaps = tmp_path / "interrupted.png", tmp_path / "snaps"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "stylize",
            PHOTO,
            PAINTING,
            "-o",
            out,
            "--size",
            "64",
            "--iterations",
            "5000",
            "--weights",
            "random",
            "--json",
            "--scales",
            "1",
            "--snapshot-every",
            "1",
            "--snapshot-dir",
            snaps,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The first snapshot on disk says the optimization is under way.
    deadline = time.monotonic() + 120
    while not (snaps.is_dir() and os.listdir(snaps)) and process.poll() is None:
        assert time.monotonic() < deadline, "no snapshot after two minutes"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted after" in stderr and "Traceback" not in stderr
    report = json.loads(stdout)
    assert report["canceled"] is True and 0 < report["iterations"] < 5000
    assert load(out).size == (64, 48)


def test_help_lists_every_flag():
    done = impasto("stylize", "--help")
    assert done.returncode == 0
    from_the_model = ["--" + name.replace("_", "-") for name in StyleParams.model_fields]
    for flag in (*from_the_model, "--snapshot-dir", "--device", "--json", "--output"):
        assert flag in done.stdout
    # The list, so that a renamed field cannot drop one silently.
    for flag in (
        "--size",
        "--iterations",
        "--optimizer",
        "--learning-rate",
        "--init",
        "--pooling",
        "--content-weight",
        "--style-weight",
        "--tv-weight",
        "--style-blend",
        "--style-scale",
        "--preserve-colors",
        "--scales",
        "--snapshot-every",
        "--seed",
        "--weights",
    ):
        assert flag in from_the_model


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jpg", PAINTING], "missing.jpg: no such file"),
        ([PHOTO, "{tmp}"], "is a directory"),
        (["{tmp}/notes.txt", PAINTING], "is not an image that can be read"),
        ([PHOTO, "{tmp}/truncated.png"], "truncated or corrupt"),
        ([PHOTO, PAINTING, "--size", "0"], "--size: Input should be greater than or equal to 16"),
        ([PHOTO, PAINTING, "--size", "big"], "argument --size: invalid int value"),
        ([PHOTO, PAINTING, "--style-layers", "conv9_1"], "--style-layers: unknown VGG-19 layer 'conv9_1'"),
        ([PHOTO, PAINTING, "--content-layers", "fc7"], "--content-layers: unknown VGG-19 layer 'fc7'"),
        ([PHOTO, PAINTING, "--style-weight", "-1"], "--style-weight: Input should be greater than or equal to 0"),
        ([PHOTO, PAINTING, "--tv-weight", "nan"], "--tv-weight: Input should be a finite number"),
        ([PHOTO, PAINTING, "--style-blend", "1", "2"], "2 numbers for 1 style images"),
        ([PHOTO, PAINTING, "--optimizer", "sgd"], "argument --optimizer: invalid choice"),
        ([PHOTO, PAINTING, "--weights", "{tmp}/none.pth"], "none.pth does not exist"),
        ([PHOTO, PAINTING, "--weights", "{tmp}/notes.txt"], "is not a PyTorch state dict"),
        ([PHOTO, PAINTING, "--weights", "imagenet"], "IMPASTO_VGG_WEIGHTS"),
        ([PHOTO, PAINTING, "--device", "cuda"], "no CUDA GPU is available"),
        ([PHOTO, PAINTING, "--device", "mps"], "unknown device 'mps'"),
        ([PHOTO, PAINTING, "--device", "toaster"], "unknown device 'toaster'"),
        ([PHOTO, PAINTING, "--style-layers", "pool5", "--size", "16", "--weights", "random"], "needs at least 32 px"),
        (
            [PHOTO, PAINTING, "--style-layers", "conv1_1", "--style-layer-weights", "1", "2"],
            "--style-layer-weights: 2 numbers for 1 style layers",
        ),
        ([PHOTO, PAINTING, "--style-layers", "conv1_1", "conv1_1"], "a layer is named twice"),
        ([PHOTO, PAINTING, "--size", "16", "--weights", "random"], "needs at least 16 px"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("not an image")
    load(PAINTING).save(tmp_path / "whole.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "whole.png").read_bytes()[:600])
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    done = impasto("stylize", *args, "-o", tmp_path / "out.png", "--iterations", "1")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert message in lines[0] and lines[0].startswith("impasto stylize: error:")
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    "output, message",
    [
        ("out.gifx", "--output: {tmp}/out.gifx should end in one of .png"),
        ("nowhere/out.png", "--output: folder {tmp}/nowhere does not exist"),
        ("folder.png", "--output: {tmp}/folder.png is a folder"),
    ],
)
def test_bad_output_path_is_refused_before_any_work(tmp_path, output, message):
    (tmp_path / "folder.png").mkdir()
    # 50,000 iterations at 512 px would take hours: only a check before any work answers fast.
    started = time.monotonic()
    done = impasto("stylize", PHOTO, PAINTING, "-o", tmp_path / output, "--iterations", "50000", "--weights", "random")
    assert done.returncode == 2 and time.monotonic() - started < 60
    assert done.stderr.startswith("impasto stylize: error: " + message.replace("{tmp}", str(tmp_path)))
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_command_and_bare_impasto():
    assert impasto("paint").returncode == 2
    bare = impasto()
    assert bare.returncode == 2 and "stylize" in bare.stderr
