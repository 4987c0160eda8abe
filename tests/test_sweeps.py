"""Sweeps: the axes' rules, the contact sheet, `impasto sweep` on this machine, and sweeps on
the running service (web and worker processes, PostgreSQL, Redis) through the API and
`impasto submit` / `impasto status`."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from shared.db import make_engine, session_factory
from shared.models import Job
from shared.sheet import BACKGROUND, contact_sheet
from shared.sweeps import AxisError, axes_from_json, axis_from_flag, check_axes, grid, shape, sweep_status
from tests.conftest import PAINTING, PHOTO, load
from tests.servers import running_service, wait_for_status

# --- the axes -----------------------------------------------------------------------------


def test_axes_from_json_take_numbers_text_and_lists_as_the_job_fields_do():
    axes = axes_from_json('{"style_weight": [0.3, 3, 1e6], "style_layers": [["relu1_1", "relu2_1"], "relu3_1"]}')
    assert [(a.name, a.values) for a in axes] == [
        ("style_weight", ("0.3", "3", "1e+06")),
        ("style_layers", ("relu1_1 relu2_1", "relu3_1")),
    ]
    cells = check_axes(axes, {}, 25)
    assert [c.values for c in cells][:3] == [("0.3", "relu1_1 relu2_1"), ("0.3", "relu3_1"), ("3", "relu1_1 relu2_1")]
    assert shape(axes) == (3, 2) and len(grid(axes)) == 6


def test_axis_flags_split_on_commas_or_on_semicolons_when_given():
    assert axis_from_flag("style-weight=1,10, 100").values == ("1", "10", "100")
    assert axis_from_flag("style_layers=relu1_1 relu2_1;relu3_1").values == ("relu1_1 relu2_1", "relu3_1")
    with pytest.raises(AxisError, match="NAME=V1,V2"):
        axis_from_flag("style_weight")


@pytest.mark.parametrize(
    ("axes", "axis", "value", "words"),
    [
        ('{"nonsense": [1, 2]}', "nonsense", None, "not a parameter"),
        ('{"style_weight": [1, -1]}', "style_weight", "-1", "greater than or equal to 0"),
        ('{"content_layers": ["relu4_2", "relu9_9"]}', "content_layers", "relu9_9", "relu9_9"),
        ('{"style_weight": [1]}', "style_weight", None, "at least two values"),
        ('{"style_weight": [1, 1.0]}', "style_weight", "1", "given twice"),
        ('{"style": [1, 2]}', "style", None, "one photo with one set of styles"),
        ('{"a": [1, 2], "b": [1, 2], "c": [1, 2]}', None, None, "one or two parameters"),
        ('{"style_weight": [1, 2, 3, 4, 5, 6], "tv_weight": [0, 1, 2, 3, 4]}', "tv_weight", None, "30 cells"),
    ],
)
def test_bad_axes_name_the_axis_and_the_value(axes, axis, value, words):
    with pytest.raises(AxisError, match=words) as caught:
        check_axes(axes_from_json(axes), {}, 25)
    assert (caught.value.axis, caught.value.value) == (axis, value) or axis is None


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["queued", "queued"], "queued"),
        (["succeeded", "queued"], "running"),
        (["running", "queued"], "running"),
        (["succeeded", "succeeded"], "succeeded"),
        (["succeeded", "failed", "canceled"], "failed"),
        (["succeeded", "canceled"], "canceled"),
        (["succeeded", None], "canceled"),  # a deleted cell
    ],
)
def test_a_sweeps_status_follows_its_cells(statuses, expected):
    assert sweep_status(statuses) == expected


def test_the_sheet_puts_each_picture_in_its_cell_row_major():
    axes = axes_from_json('{"style_weight": [1, 2], "tv_weight": [0, 1, 2]}')
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), None]
    pictures = [Image.new("RGB", (40, 30), c) if c else None for c in colours]
    photo = Image.new("RGB", (40, 30), (90, 90, 90))
    sheet = contact_sheet(axes, pictures, content=photo, styles=[photo], notes=[""] * 5 + ["queued"], cell=40)
    found = _cell_colours(sheet, rows=2, columns=3, cell=(40, 30))
    assert found[:5] == colours[:5]
    assert found[5] != colours[4] and found[5] != BACKGROUND  # blank, and not painted over


def _cell_colours(sheet: Image.Image, rows: int, columns: int, cell: tuple[int, int]) -> list[tuple[int, int, int]]:
    """The colour at the centre of each cell, the grid found from the bottom-right corner."""
    from shared.sheet import GAP, PAD

    width, height = cell
    right, bottom = sheet.width - PAD, sheet.height - PAD
    colours = []
    for r in range(rows):
        for c in range(columns):
            x = right - (columns - c) * (width + GAP) + GAP + width // 2
            y = bottom - (rows - r) * (height + GAP) + GAP + height // 2
            colours.append(sheet.getpixel((x, y)))
    return colours


# --- impasto sweep ------------------------------------------------------------------------


def test_impasto_sweep_writes_the_sheet_and_each_cell(tmp_path):
    out, cells = tmp_path / "sheet.png", tmp_path / "cells"
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "sweep", str(PHOTO), str(PAINTING), "--axis", "style_weight=0.1,10"]
        + ["--size", "64", "--iterations", "6", "--weights", "random", "-o", str(out), "--cells-dir", str(cells)]
        + ["--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [c["values"] for c in report["cells"]] == [["0.1"], ["10"]]
    assert report["style_targets"]["reused"] >= 1  # the second cell took the first's style targets
    first, second = (load(cells / f"cell_0{i}.png") for i in range(2))
    assert first.size == second.size == (64, 48)
    assert _mean_difference(first, second) > 1  # the style weight changed the picture
    assert load(out).width > 2 * 64


def test_impasto_sweep_refuses_a_bad_axis_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "sweep", str(PHOTO), str(PAINTING), "--axis", "style_weight=1,-2"]
        + ["-o", str(tmp_path / "sheet.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "impasto sweep: error: axis style_weight, value '-2': Input should be greater than or equal to 0"
    ]


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a.convert("L"), float) - np.asarray(b.convert("L"), float)).mean())


# --- on the service -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running_service("postgresql", tmp_path_factory.mktemp("sweeps")) as found:
        yield found


def submit_sweep(service, axes: dict, **fields) -> requests.Response:
    with open(PHOTO, "rb") as photo, open(PAINTING, "rb") as painting:
        return requests.post(
            f"{service.base}/api/v1/sweeps",
            timeout=30,
            files={"content": ("tubingen.jpg", photo), "style": ("starry_night.jpg", painting)},
            data={"size": "64", "iterations": "8", "snapshot_every": "4", "weights": "random"}
            | fields
            | {"axes": json.dumps(axes)},
        )


def test_a_sweep_runs_its_cells_as_jobs_and_draws_their_sheet(service):
    response = submit_sweep(service, {"style_weight": [0.1, 10], "content_layers": ["relu2_2", "relu4_2"]})
    assert response.status_code == 202, response.text
    sweep = response.json()
    assert sweep["status"] == "queued" and sweep["token"]
    assert sweep["axes"] == [
        {"name": "style_weight", "values": ["0.1", "10"]},
        {"name": "content_layers", "values": ["relu2_2", "relu4_2"]},
    ]
    assert [c["values"] for c in sweep["cells"]] == [
        ["0.1", "relu2_2"],
        ["0.1", "relu4_2"],
        ["10", "relu2_2"],
        ["10", "relu4_2"],
    ]
    assert response.headers["Location"] == f"/api/v1/sweeps/{sweep['id']}"

    # The events stream ends with every cell done.
    last = None
    with requests.get(f"{service.base}/api/v1/sweeps/{sweep['id']}/events", stream=True, timeout=300) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                last = json.loads(line.removeprefix("data: "))
    assert last["status"] == "succeeded", last
    assert all(c["status"] == "succeeded" and c["output_url"] for c in last["cells"])

    # Each cell is an ordinary job, with the cell's parameters.
    for cell in last["cells"]:
        job = requests.get(service.base + cell["job_url"], timeout=5).json()
        assert job["status"] == "succeeded"
        assert job["params"]["style_weight"] == float(cell["values"][0])
        assert job["params"]["content_layers"] == [cell["values"][1]]
    engine = make_engine(service.settings.database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.query(Job).filter(Job.sweep_id == sweep["id"]).order_by(Job.cell).all()
            assert [r.cell for r in rows] == [0, 1, 2, 3] and {r.token_hash for r in rows} != {None}
    finally:
        engine.dispose()

    sheet = requests.get(service.base + sweep["sheet_url"] + "?download=1", timeout=30)
    assert sheet.headers["Content-Type"] == "image/png"
    assert sheet.headers["Content-Disposition"] == f'attachment; filename="impasto-sweep-{sweep["id"]}.png"'
    picture = Image.open(io.BytesIO(sheet.content)).convert("RGB")
    outputs = [
        Image.open(io.BytesIO(requests.get(service.base + c["output_url"], timeout=5).content)) for c in last["cells"]
    ]
    # Each cell of the sheet holds its own output, scaled to the sheet's 256 px cells.
    found = _cell_colours(picture, rows=2, columns=2, cell=(256, 192))
    for colour, output in zip(found, outputs):
        centre = output.convert("RGB").getpixel((32, 24))
        assert max(abs(a - b) for a, b in zip(colour, centre)) < 60, (colour, centre)


@pytest.mark.parametrize(
    ("axes", "words"),
    [
        ({"nonsense": [1, 2]}, "axis nonsense: not a parameter"),
        ({"style_weight": [1, -1]}, "axis style_weight, value '-1'"),
        ({"size": [64, 4096]}, "cell size=4096: size: at most"),  # the service's own limit, per cell
        ({"style_weight": [1, 2, 3, 4, 5, 6], "tv_weight": [0, 1, 2, 3, 4]}, "30 cells; at most 25"),
        ({"style_preset": ["a", "b"]}, "one photo with one set of styles"),
    ],
)
def test_bad_axes_are_a_422_naming_the_axis(service, axes, words):
    response = submit_sweep(service, axes)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "axes" and words in error["message"], error


def test_a_sweep_without_axes_is_a_422(service):
    with open(PHOTO, "rb") as photo:
        response = requests.post(
            f"{service.base}/api/v1/sweeps", files={"content": photo}, data={"style_preset": "starry_night"}, timeout=30
        )
    assert response.status_code == 422 and response.json()["error"]["field"] == "axes"


def test_canceling_a_sweep_cancels_every_cell_not_yet_ended(service):
    sweep = submit_sweep(service, {"style_weight": [1, 2, 3]}, size="96", iterations="4000", snapshot_every="0")
    sweep = sweep.json()
    wait_for_status(service.base, sweep["cells"][0]["job_id"], {"running"})
    refused = requests.post(f"{service.base}/api/v1/sweeps/{sweep['id']}/cancel", timeout=5)
    assert refused.status_code == 403
    token = {"X-Job-Token": sweep["token"]}
    response = requests.post(f"{service.base}/api/v1/sweeps/{sweep['id']}/cancel", headers=token, timeout=5)
    assert response.status_code in (200, 202)
    for cell in sweep["cells"]:
        wait_for_status(service.base, cell["job_id"], {"canceled"}, timeout=60)
    final = requests.get(f"{service.base}/api/v1/sweeps/{sweep['id']}", timeout=5).json()
    assert final["status"] == "canceled"


def test_impasto_submit_follows_a_sweep_and_a_job_and_downloads_them(service, tmp_path):
    def impasto(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, timeout=300, env=service.env
        )

    sheet = tmp_path / "sheet.png"
    flags = ["--size", "64", "--iterations", "6", "--weights", "random"]
    swept = impasto("submit", "--server", service.base, str(PHOTO), str(PAINTING), "--axis", "tv_weight=0,1", *flags)
    assert swept.returncode == 0, swept.stderr
    body = json.loads(swept.stdout)
    assert body["status"] == "succeeded" and len(body["cells"]) == 2
    status = impasto("status", "--server", service.base, body["id"], "-o", str(sheet))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["id"] == body["id"] and load(sheet).width > 2 * 64

    picture = tmp_path / "out.png"
    single = impasto("submit", "--server", service.base, str(PHOTO), str(PAINTING), "-o", str(picture), *flags)
    assert single.returncode == 0, single.stderr
    assert json.loads(single.stdout)["params"]["iterations"] == 6 and load(picture).size == (64, 48)

    refused = impasto("submit", "--server", service.base, str(PHOTO), str(PAINTING), "--size", "4096")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("impasto submit: error: size: at most")
    missing = impasto("status", "--server", service.base, "no-such-id")
    assert missing.returncode == 2 and "no job or sweep no-such-id" in missing.stderr
