"""Style masks through the real service (`impasto up`: Redis, SQLite, gunicorn and a Celery
worker): submitted with the API, and painted with the form's brush in Debian's Chromium.

The jobs are tiny (64 px, one scale, random VGG weights); each checks that the picture follows
the masks: a grey photo, a red style on one half and a blue one on the other.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import Page, expect

from tests.helpers import BLUE, GREY, RED, encode, half_masks, mean_colour
from tests.servers import wait_for_status

JOB = {"size": "64", "iterations": "30", "scales": "1", "weights": "random"}
JOB_TIMEOUT_S = 150  # a cold worker imports torch and builds VGG-19 first


def assert_halves_follow(picture: Image.Image, left_style: Image.Image, right_style: Image.Image) -> None:
    """Each half of the picture nearer its own style's mean colour than the other's, and apart."""
    width = picture.width
    left, right = mean_colour(picture, slice(0, width // 2)), mean_colour(picture, slice(width // 2, None))
    own_left, own_right = mean_colour(left_style, slice(None)), mean_colour(right_style, slice(None))
    assert np.linalg.norm(left - own_left) < np.linalg.norm(left - own_right), (left, right)
    assert np.linalg.norm(right - own_right) < np.linalg.norm(right - own_left), (left, right)
    assert np.linalg.norm(left - right) > 0.1, (left, right)


def fetch_image(url: str) -> Image.Image:
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    return Image.open(io.BytesIO(answer.content)).convert("RGB")


def post_job(server: str, masks: list[Image.Image]) -> requests.Response:
    """A grey photo, a red style then a blue one, with `masks` as their style_mask files."""
    files = [
        ("content", ("grey.png", encode(GREY), "image/png")),
        ("style", ("red.png", encode(RED), "image/png")),
        ("style", ("blue.png", encode(BLUE), "image/png")),
        *(("style_mask", (f"mask{i}.png", encode(mask), "image/png")) for i, mask in enumerate(masks)),
    ]
    return requests.post(f"{server}/api/v1/jobs", files=files, data=JOB, timeout=30)


def test_the_api_takes_one_mask_per_style_end_to_end(server):
    left, right = half_masks()
    answer = post_job(server, [left, right])
    assert answer.status_code == 202, answer.text
    job = wait_for_status(server, answer.json()["id"], {"succeeded", "failed", "canceled"}, timeout=JOB_TIMEOUT_S)
    assert job["status"] == "succeeded", job
    assert_halves_follow(fetch_image(server + job["output_url"]), RED, BLUE)
    for url, sent in zip(job["style_masks"], (left, right)):
        assert requests.get(server + url, timeout=10).content == encode(sent)


def test_the_api_refuses_a_colour_mask_naming_the_field(server):
    answer = post_job(server, [half_masks()[0], BLUE])
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["field"] == "style_mask" and "style_mask 2 is in colour" in error["message"]


# --------------------------------------------------------------------------- the brush, in Chromium


@pytest.fixture
def page(browser, server):
    """A tab of a browser with a mouse and a touch screen."""
    context = browser.new_context(base_url=server, has_touch=True)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    context.close()


@pytest.fixture
def pictures(tmp_path):
    paths = {}
    for name, image in {"grey.png": GREY, "red.png": RED, "blue.png": BLUE}.items():
        image.save(tmp_path / name)
        paths[name] = str(tmp_path / name)
    return paths


def on_canvas(page: Page, x: float, y: float) -> tuple[float, float]:
    """Viewport coordinates of a point given in the photo's pixels (the canvas is the photo's size)."""
    box = page.locator("#brush-canvas").bounding_box()
    return box["x"] + x * box["width"] / GREY.width, box["y"] + y * box["height"] / GREY.height


def paint_with_the_mouse(page: Page, strokes: list[tuple[float, float, float, float]]) -> None:
    for x0, y0, x1, y1 in strokes:
        page.mouse.move(*on_canvas(page, x0, y0))
        page.mouse.down()
        page.mouse.move(*on_canvas(page, x1, y1), steps=6)
        page.mouse.up()


def paint_with_a_finger(page: Page, strokes: list[tuple[float, float, float, float]]) -> None:
    """Real touch input (Chromium turns it into pointer events of type touch)."""
    cdp = page.context.new_cdp_session(page)
    for x0, y0, x1, y1 in strokes:
        x, y = on_canvas(page, x0, y0)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        for step in range(1, 7):
            x, y = on_canvas(page, x0 + (x1 - x0) * step / 6, y0 + (y1 - y0) * step / 6)
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def rows(x0: float, x1: float) -> list[tuple[float, float, float, float]]:
    """Horizontal strokes from x0 to x1 every 6 px down the photo."""
    return [(x0, y, x1, y) for y in range(0, GREY.height + 1, 6)]


def test_paint_two_regions_and_the_picture_follows_them(page: Page, problems: list[str], pictures):
    page.goto("/")
    expect(page.locator("#brush")).to_be_hidden()
    page.set_input_files("#field-content", pictures["grey.png"])
    page.set_input_files("#field-style", [pictures["red.png"], pictures["blue.png"]])
    expect(page.locator("#brush")).to_be_visible()
    expect(page.locator("#brush-styles label")).to_have_count(2)
    page.locator("#brush-size").fill("14")
    page.locator("#brush-canvas").scroll_into_view_if_needed()

    page.click("#brush-fill")
    expect(page.locator("#brush-status")).to_contain_text("Painted regions for 1 of 2 styles")
    page.click("#brush-clear")
    expect(page.locator("#brush-status")).to_contain_text("Nothing painted")

    paint_with_the_mouse(page, [*rows(4, 26), (40, 20, 60, 28)])  # style 1, red: the left half, and a slip
    page.check("#brush-eraser")
    paint_with_the_mouse(page, rows(34, 64))  # the slip rubbed out
    page.uncheck("#brush-eraser")
    page.check("#brush-style-1")
    paint_with_a_finger(page, rows(38, 60))  # style 2, blue: the right half
    expect(page.locator("#brush-status")).to_contain_text("Painted regions for 2 of 2 styles.")

    page.fill("#field-size", JOB["size"])
    page.fill("#field-iterations", JOB["iterations"])
    page.click("details#advanced > summary")
    page.select_option("#field-weights", JOB["weights"])
    page.fill("#field-scales", JOB["scales"])
    page.click("#submit")

    page.wait_for_url(re.compile(r"/jobs/[^/?#]+$"))
    job_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    masks = page.locator(".mask-thumb")
    expect(masks).to_have_count(2)
    page.wait_for_function("[...document.querySelectorAll('.mask-thumb')].every(i => i.complete && i.naturalWidth > 0)")
    base = page.url.split("/jobs/")[0]
    job = wait_for_status(base, job_id, {"succeeded", "failed"}, timeout=JOB_TIMEOUT_S)
    assert job["status"] == "succeeded", job
    expect(page.locator("#status")).to_have_text("succeeded", timeout=30_000)

    painted = [np.asarray(fetch_image(base + url).convert("L"), float) / 255 for url in job["style_masks"]]
    for mask, (own, other) in zip(painted, [(slice(0, 24), slice(40, None)), (slice(40, None), slice(0, 24))]):
        assert mask.shape == (GREY.height, GREY.width)
        assert mask[:, own].mean() > 0.9 and mask[:, other].mean() < 0.05
    assert_halves_follow(fetch_image(base + job["output_url"]), RED, BLUE)
    assert problems == []


def test_a_keyboard_user_submits_without_masks(page: Page, problems: list[str], pictures):
    page.goto("/")
    page.set_input_files("#field-content", pictures["grey.png"])
    expect(page.locator("#brush")).to_be_visible()  # the built-in style is chosen: one to paint
    page.fill("#field-size", "32")
    page.fill("#field-iterations", "2")
    page.locator("#field-iterations").press("Enter")
    page.wait_for_url(re.compile(r"/jobs/[^/?#]+$"))
    expect(page.locator(".mask-thumb")).to_have_count(0)
    expect(page.locator(".inputs img")).to_have_count(2)
    assert problems == []
