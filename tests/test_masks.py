"""Spatial control: a style for each region of the output, from the engine to the command line."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_content, make_style
from PIL import Image

from shared.images import ImageError, decode_mask
from shared.params import StyleParams
from tests.helpers import BLUE, GREY, RED, encode, form_token, half_masks, mean_colour
from worker.engine import EngineError, Progress, Result, Resume, StyleObjective, VGGFeatures, stylize
from worker.engine.images import to_tensor
from worker.engine.losses import gram_matrix
from worker.engine.masks import guided_gram, mask_tensor
from worker.engine.targets import NetworkKey, TargetCache

WIDTH, HEIGHT = GREY.size


def run(content, styles, weights, masks=None, resume=None, cache=None, **options):
    params = StyleParams(**{"size": 64, "iterations": 8, "scales": 1, "weights": "random", **options})
    events = list(
        stylize(
            content,
            styles,
            params,
            device="cpu",
            weights=weights,
            style_masks=masks,
            resume=resume,
            targets_cache=cache,
        )
    )
    return events, events[-1]


# --------------------------------------------------------------------------- the measure


@pytest.mark.parametrize("order", ["red-left", "blue-left"])
def test_each_half_takes_its_own_styles_colours(random_weights, order):
    """A grey photo, a red style masked to one half and a blue one to the other: each half of
    the picture comes out nearer its own style's mean colour than the other's, clearly apart."""
    left_style, right_style = (RED, BLUE) if order == "red-left" else (BLUE, RED)
    _, result = run(GREY, [left_style, right_style], random_weights, half_masks(), iterations=30)
    left, right = mean_colour(result.image, slice(0, WIDTH // 2)), mean_colour(result.image, slice(WIDTH // 2, None))
    own_left, own_right = mean_colour(left_style, slice(None)), mean_colour(right_style, slice(None))
    assert np.linalg.norm(left - own_left) < np.linalg.norm(left - own_right)
    assert np.linalg.norm(right - own_right) < np.linalg.norm(right - own_left)
    assert np.linalg.norm(left - right) > 0.15


def test_without_masks_the_halves_are_alike(random_weights):
    """The control for the test above: the same two styles blended, no masks, leave no seam."""
    _, result = run(GREY, [RED, BLUE], random_weights, iterations=30)
    left, right = mean_colour(result.image, slice(0, WIDTH // 2)), mean_colour(result.image, slice(WIDTH // 2, None))
    assert np.linalg.norm(left - right) < 0.05


def test_where_no_mask_is_white_the_photo_is_kept(random_weights):
    photo = make_content(WIDTH, HEIGHT)
    left, _ = half_masks()
    _, masked = run(photo, [make_style()], random_weights, [left], iterations=15)
    _, everywhere = run(photo, [make_style()], random_weights, iterations=15)

    def change(result, columns):
        return (np.abs(np.asarray(result.image, float) - np.asarray(photo, float))[:, columns] / 255).mean()

    far_right = slice(3 * WIDTH // 4, None)  # away from the seam, where deep layers see both sides
    assert change(masked, slice(0, WIDTH // 4)) > 0.5 * change(everywhere, slice(0, WIDTH // 4))
    assert change(masked, far_right) < 0.2 * change(everywhere, far_right)


# --------------------------------------------------------------------------- guided Gram matrices


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_an_all_white_mask_gives_the_plain_gram_matrix(layout):
    features = torch.rand(1, 8, 5, 7).contiguous(memory_format=layout)
    ones = torch.ones(35)
    assert torch.allclose(guided_gram(features, ones, ones.sum()), gram_matrix(features), atol=1e-6)


def test_a_guided_gram_is_the_gram_of_its_region_alone():
    features = torch.rand(1, 4, 6, 6)
    weights = torch.zeros(6, 6)
    weights[:, :3] = 1
    region = features[..., :3].contiguous()
    guided = guided_gram(features, weights.reshape(-1), weights.sum())
    assert torch.allclose(guided, gram_matrix(region), atol=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_a_gathered_guided_gram_is_the_same_as_a_weighted_one(layout):
    features = torch.rand(1, 8, 6, 6).contiguous(memory_format=layout).requires_grad_(True)
    weights = torch.zeros(36)
    weights[5:20] = torch.rand(15)
    index = weights.nonzero().reshape(-1)
    full = guided_gram(features, weights, weights.sum())
    gathered = guided_gram(features, weights[index], weights.sum(), index)
    assert torch.allclose(full, gathered, atol=1e-6)
    (full_grad,) = torch.autograd.grad(full.pow(2).sum(), features)
    (gathered_grad,) = torch.autograd.grad(gathered.pow(2).sum(), features)
    assert torch.allclose(full_grad, gathered_grad, atol=1e-6)


def test_an_all_white_mask_is_the_same_objective_as_none(random_weights, content_image, style_image):
    params = StyleParams(size=48, weights="random")
    net = VGGFeatures(random_weights, (*params.content_layers, *params.style_layers))
    content, style = to_tensor(content_image), to_tensor(style_image, (40, 40))
    white = mask_tensor(Image.new("L", (3, 3), 255), content_image.size)
    plain = StyleObjective(net, params, content, [style], [1.0])
    masked = StyleObjective(net, params, content, [style], [1.0], style_masks=[white])
    image = torch.rand(content.shape)
    for a, b in zip(plain(image), masked(image)):
        assert torch.allclose(a, b, rtol=1e-5)


def test_a_grey_mask_is_the_style_at_part_strength(random_weights, content_image, style_image):
    params = StyleParams(size=48, weights="random")
    net = VGGFeatures(random_weights, (*params.content_layers, *params.style_layers))
    content, style = to_tensor(content_image), to_tensor(style_image, (40, 40))

    def style_term(grey):
        mask = mask_tensor(Image.new("L", content_image.size, grey), content_image.size)
        return StyleObjective(net, params, content, [style], [1.0], style_masks=[mask])(image)[1]

    image = torch.rand(content.shape)
    assert torch.allclose(style_term(51), 0.2 * style_term(255), rtol=1e-4)
    assert style_term(0) == 0


def test_masks_that_are_all_none_are_no_masks(random_weights):
    photo = make_content(WIDTH, HEIGHT)
    _, plain = run(photo, [RED, BLUE], random_weights)
    _, none = run(photo, [RED, BLUE], random_weights, [None, None])
    assert np.array_equal(np.asarray(plain.image), np.asarray(none.image))


def test_the_target_cache_serves_masked_runs_correctly(random_weights):
    """Targets are whole-style Gram matrices, masks act on the output's side: a cache filled by a
    run with some masks serves a run with others and gives the same picture as no cache."""
    photo = make_content(WIDTH, HEIGHT)
    left, right = half_masks()
    cache = TargetCache()
    run(photo, [RED, BLUE], random_weights, [left, right], cache=cache)
    misses = cache.misses
    _, cached = run(photo, [RED, BLUE], random_weights, [right, left], cache=cache)
    _, fresh = run(photo, [RED, BLUE], random_weights, [right, left])
    assert cache.misses == misses and cache.hits >= 2
    assert np.array_equal(np.asarray(cached.image), np.asarray(fresh.image))
    assert all(isinstance(key[0], NetworkKey) for key in cache._entries)


# --------------------------------------------------------------------------- masks and the other options


@pytest.mark.parametrize(
    "options",
    [
        {"preserve_colors": "luminance"},
        {"preserve_colors": "histogram"},
        {"style_scale": 0.5},
        {"style_scale": 2.0},
        {"scales": 2, "size": 96},
        {"style_blend": (3.0, 1.0)},
        {"optimizer": "adam"},
    ],
    ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()),
)
def test_masks_work_with_every_option(random_weights, options):
    photo = make_content(WIDTH, HEIGHT)
    masks = half_masks(31, 17)  # resized to the output, whatever its size
    events, result = run(photo, [RED, BLUE], random_weights, masks, **options)
    assert isinstance(result, Result) and result.iterations == 8
    assert result.losses.total < result.initial_losses.total or result.initial_losses.style == 0
    expected = (96, 72) if options.get("size") == 96 else (64, 48)
    assert result.image.size == expected
    if options.get("preserve_colors") == "luminance":  # the colour comes from the photo
        chroma = np.asarray(result.image.convert("YCbCr"), float)[..., 1:]
        assert np.abs(chroma - np.asarray(photo.convert("YCbCr"), float)[..., 1:]).mean() < 4


def test_a_masked_run_resumes_where_it_stopped(random_weights):
    photo = make_content(WIDTH, HEIGHT)
    masks = half_masks()
    stopped = iter([False] * 5 + [True])
    params = StyleParams(size=64, iterations=10, scales=1, weights="random")
    first = list(
        stylize(
            photo,
            [RED, BLUE],
            params,
            device="cpu",
            weights=random_weights,
            style_masks=masks,
            should_stop=lambda: next(stopped),
        )  # fmt: skip
    )[-1]
    assert first.canceled and first.iterations == 5
    events, resumed = run(
        photo, [RED, BLUE], random_weights, masks, iterations=10, resume=Resume(first.iterations, first.image)
    )
    assert resumed.iterations == 10 and not resumed.canceled
    assert [e.iteration for e in events if isinstance(e, Progress)] == list(range(6, 11))
    assert resumed.losses.total <= first.losses.total * 1.01


# --------------------------------------------------------------------------- refusals


def test_a_wrong_number_of_masks_is_refused(random_weights):
    with pytest.raises(EngineError, match="1 style masks for 2 style images"):
        run(GREY, [RED, BLUE], random_weights, [half_masks()[0]])


def test_a_colour_mask_is_refused_by_the_engine(random_weights):
    with pytest.raises(EngineError, match="style mask 2 is a RGB image; give a single-channel"):
        run(GREY, [RED, BLUE], random_weights, [half_masks()[0], RED])


@pytest.mark.parametrize(
    "image, value",
    [
        (Image.new("L", (4, 4), 200), 200),
        (Image.new("1", (4, 4), 1), 255),
        (Image.new("RGB", (4, 4), (90, 90, 90)), 90),
        (Image.new("RGBA", (4, 4), (255, 255, 255, 128)), 128),  # half painted
        (Image.new("RGBA", (4, 4), (255, 255, 255, 0)), 0),  # not painted
        (Image.new("LA", (4, 4), (255, 255)), 255),
        (Image.new("I;16", (4, 4), 65535), 255),
        (Image.new("P", (4, 4), 0), 0),
    ],
    ids=lambda v: v.mode if isinstance(v, Image.Image) else str(v),
)
def test_grey_scale_convertible_masks_decode_to_one_channel(image, value):
    mask = decode_mask(encode(image), name="style_mask[1]")
    assert mask.mode == "L" and mask.size == (4, 4) and mask.getpixel((0, 0)) == value


@pytest.mark.parametrize(
    "data, message",
    [
        (encode(RED), "style_mask\\[1\\] is in colour; a mask is grey-scale"),
        (b"not an image", "style_mask\\[1\\] is not an image that can be read"),
        (encode(RED.convert("L"))[:2000], "style_mask\\[1\\] is truncated or corrupt"),
    ],
    ids=["colour", "not-an-image", "truncated"],
)
def test_bad_masks_are_refused_with_a_message(data, message):
    with pytest.raises(ImageError, match=message):
        decode_mask(data, name="style_mask[1]")


# --------------------------------------------------------------------------- the command line


def impasto(*args):
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=240,
    )


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, image in {"grey.png": GREY, "red.png": RED, "blue.png": BLUE, "colour.png": RED}.items():
        image.save(tmp_path / name)
        paths[name] = tmp_path / name
    for name, image in zip(("left.png", "right.png"), half_masks()):
        image.save(tmp_path / name)
        paths[name] = tmp_path / name
    return paths


def test_the_command_line_paints_each_half_with_its_style(files, tmp_path):
    out = tmp_path / "out.png"
    done = impasto(
        "stylize", files["grey.png"], files["red.png"], files["blue.png"],
        "--style-masks", files["left.png"], files["right.png"],
        "-o", out, "--size", 64, "--iterations", 30, "--scales", 1, "--weights", "random",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(out) as written:
        picture = written.convert("RGB")
    left, right = mean_colour(picture, slice(0, 32)), mean_colour(picture, slice(32, None))
    red, blue = mean_colour(RED, slice(None)), mean_colour(BLUE, slice(None))
    assert np.linalg.norm(left - red) < np.linalg.norm(left - blue)
    assert np.linalg.norm(right - blue) < np.linalg.norm(right - red)


@pytest.mark.parametrize(
    "masks, message",
    [
        (["left.png"], "--style-masks: 1 masks for 2 style images; give one mask per style"),
        (["left.png", "colour.png"], "colour.png is in colour; a mask is grey-scale"),
        (["left.png", "missing.png"], "missing.png: no such file"),
    ],
    ids=["count", "colour", "missing"],
)
def test_the_command_line_refuses_bad_masks_in_one_line(files, tmp_path, masks, message):
    paths = [files.get(name, tmp_path / name) for name in masks]
    done = impasto(
        "stylize", files["grey.png"], files["red.png"], files["blue.png"], "--style-masks", *paths,
        "-o", tmp_path / "out.png", "--size", 32, "--iterations", 2, "--weights", "random",
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "out.png").exists()


# --------------------------------------------------------------------------- the API (Flask's test client)


def submit_with_masks(client, masks, styles=(RED, BLUE), **fields):
    data = {
        "content": (io.BytesIO(encode(GREY)), "grey.png"),
        "style": [(io.BytesIO(encode(s)), f"style{i}.png") for i, s in enumerate(styles)],
        "style_mask": [
            (io.BytesIO(m if isinstance(m, bytes) else encode(m)), f"mask{i}.png") for i, m in enumerate(masks)
        ],
        "size": "64",
        "iterations": "4",
        "weights": "random",
        **fields,
    }
    if not styles:
        del data["style"]
    return client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")


def test_the_api_stores_the_masks_with_the_inputs(client):
    left, right = half_masks()
    answer = submit_with_masks(client, [left, right])
    assert answer.status_code == 202, answer.get_json()
    job = answer.get_json()
    assert len(job["inputs"]) == 3 and len(job["style_masks"]) == 2
    for url, sent in zip(job["style_masks"], (left, right)):
        stored = client.get(url)
        assert stored.status_code == 200 and stored.data == encode(sent)
    assert client.get(job["url"]).status_code == 200
    page = client.get(job["url"]).get_data(as_text=True)
    for index, url in enumerate(job["style_masks"], start=1):
        assert f'<img src="{url}" alt="The mask of style {index}"' in page


def test_a_preset_takes_one_mask(client):
    left, _ = half_masks()
    answer = submit_with_masks(client, [left], styles=(), style_preset="starry_night")
    assert answer.status_code == 202, answer.get_json()
    assert len(answer.get_json()["style_masks"]) == 1


def test_a_job_without_masks_lists_none(client):
    answer = submit_with_masks(client, [])
    assert answer.status_code == 202 and answer.get_json()["style_masks"] == []


@pytest.mark.parametrize(
    "masks, message",
    [
        ([half_masks()[0]], "1 masks for 2 style images; send one style_mask per style"),
        ([half_masks()[0], RED], "style_mask 2 is in colour; a mask is grey-scale"),
        ([half_masks()[0], b"not an image"], "style_mask 2 is not an image that can be read"),
        ([half_masks()[0], b""], "style_mask 2 is empty"),
    ],
    ids=["count", "colour", "not-an-image", "empty"],
)
def test_bad_masks_are_a_422_naming_the_field(client, masks, message):
    answer = submit_with_masks(client, masks)
    assert answer.status_code == 422
    error = answer.get_json()["error"]
    assert error["field"] == "style_mask" and message in error["message"], error


def test_each_cell_of_a_sweep_keeps_the_masks(client):
    left, right = half_masks()
    data = {
        "content": (io.BytesIO(encode(GREY)), "grey.png"),
        "style": [(io.BytesIO(encode(s)), f"style{i}.png") for i, s in enumerate((RED, BLUE))],
        "style_mask": [(io.BytesIO(encode(m)), f"mask{i}.png") for i, m in enumerate((left, right))],
        "size": "64",
        "iterations": "4",
        "weights": "random",
        "axes": json.dumps({"style_weight": [0.5, 2]}),
    }
    answer = client.post("/api/v1/sweeps", data=data, content_type="multipart/form-data")
    assert answer.status_code == 202, answer.get_json()
    cells = answer.get_json()["cells"]
    assert len(cells) == 2
    for cell in cells:
        job = client.get(f"/api/v1/jobs/{cell['job_id']}").get_json()
        assert [client.get(url).data for url in job["style_masks"]] == [encode(left), encode(right)]


def test_masks_for_a_clip_are_refused(client):
    frames = [Image.new("RGB", (64, 48), (40 * i, 90, 120)) for i in range(3)]
    clip = io.BytesIO()
    frames[0].save(clip, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = {
        "content": (io.BytesIO(clip.getvalue()), "clip.gif"),
        "style_preset": "starry_night",
        "style_mask": (io.BytesIO(encode(half_masks()[0])), "left.png"),
        "size": "64",
        "weights": "random",
    }
    answer = client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")
    assert answer.status_code == 422, answer.get_json()
    error = answer.get_json()["error"]
    assert error["field"] == "style_mask" and "not to a clip" in error["message"]


def test_the_openapi_document_describes_style_mask(client):
    document = client.get("/api/v1/openapi.json").get_json()
    form = document["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "one grey-scale mask per style image" in form["schema"]["properties"]["style_mask"]["description"]
    assert "style_mask" in form["encoding"]
    assert "style_masks" in document["components"]["schemas"]["Job"]["properties"]


def test_the_form_shows_a_bad_mask_beside_its_field(client):
    token = form_token(client)
    data = {
        "content": (io.BytesIO(encode(GREY)), "grey.png"),
        "style_preset": "starry_night",
        "style_mask": (io.BytesIO(encode(RED)), "red.png"),
        "csrf_token": token,
    }
    answer = client.post("/jobs", data=data, content_type="multipart/form-data")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 422
    assert 'data-error-for="style_mask">style_mask 1 is in colour' in page
    assert 'id="field-style_mask"' in page and 'aria-invalid="true"' in page
