"""The web pages in a real browser: Debian's Chromium, driven by Playwright, against the real
service (`impasto up`: Redis, SQLite, the gunicorn web server and one Celery worker).

Jobs are tiny (64 px, 20 iterations, random VGG weights) so the module needs little CPU. The
pages come with the service's strict Content-Security-Policy, so an inline script or style
would show up as a console error.
"""

from __future__ import annotations

import re

import pytest
import redis
import requests
from PIL import Image
from playwright.sync_api import Page, expect

from shared.launcher import free_port
from shared.migrate import upgrade
from shared.settings import load_settings
from tests.conftest import CHROMIUM, MISSING_CHROMIUM, PAINTING, PHOTO, START_TIMEOUT_S, SYSTEM_REDIS_URL
from tests.servers import service_env, start, stop, wait_for_http

JOB_TIMEOUT_MS = 90_000  # a tiny job on a cold worker: importing torch, building VGG-19, 20 iterations

# What one test leaves for another: the job that test_submit_upload_and_download made.
STATE: dict[str, str] = {}


@pytest.fixture(scope="module")
def person(browser, server):
    """One person's browser: its cookie, which owns the jobs it submits, lasts the module."""
    context = browser.new_context(base_url=server, accept_downloads=True)
    yield context
    context.close()


@pytest.fixture
def page(person):
    """A fresh tab in that person's browser."""
    tab = person.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    tab.close()


def fill_small_job(page: Page, *, size: str = "64", iterations: str = "20") -> None:
    page.fill("#field-size", size)
    page.fill("#field-iterations", iterations)
    page.click("details#advanced > summary")
    page.select_option("#field-weights", "random")


def field_box(page: Page, name: str):
    """The form row that holds the input for `name` (where its error must be shown)."""
    return page.locator(".field, fieldset").filter(has=page.locator(f"#field-{name}")).last


def test_chromium_is_installed():
    assert CHROMIUM.exists(), MISSING_CHROMIUM


def test_submit_upload_and_download(page: Page, problems: list[str]):
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    answer = page.goto("/")
    assert "script-src 'self'" in answer.headers["content-security-policy"]  # inline code would be refused
    expect(page.locator("#field-style_preset-starry_night")).to_be_checked()  # a photo is enough
    page.set_input_files("#field-content", str(PHOTO))
    page.set_input_files("#field-style", str(PAINTING))
    # Choosing paintings switches the style to "upload my own" (form.js).
    expect(page.locator("#field-style_preset-upload")).to_be_checked()
    expect(page.locator("#content-preview img")).to_have_count(1)
    fill_small_job(page)
    page.fill("#field-snapshot_every", "4")
    page.click("#submit")

    page.wait_for_url(re.compile(r"/jobs/[^/?#]+$"))
    job_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    STATE["job_id"] = job_id
    expect(page.locator("h1")).to_contain_text(job_id)

    snapshots = page.locator("#snapshots img.snapshot")
    expect(snapshots.nth(1)).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    # Every 4th iteration, in order (the last image is the output itself).
    iterations = [int(i) for i in snapshots.evaluate_all("els => els.map(e => e.dataset.iteration)")]
    assert iterations[:4] == [4, 8, 12, 16] and iterations == sorted(set(iterations)), iterations
    # Every snapshot, the result and the input thumbnails really loaded.
    page.wait_for_function("[...document.images].every(img => img.hidden || (img.complete && img.naturalWidth > 0))")

    expect(page.locator("#output")).to_be_visible()
    assert page.locator("#output").evaluate("img => Math.max(img.naturalWidth, img.naturalHeight)") == 64
    expect(page.locator("#progress")).to_have_attribute("value", "20")
    expect(page.locator("#progress-text")).to_contain_text("20 / 20 iterations")
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#weights-warning")).to_be_hidden()  # random weights were asked for
    expect(page.locator(".inputs img")).to_have_count(2)
    # The event stream brought every update: the page never had to poll.
    assert any(url.endswith(f"/api/v1/jobs/{job_id}/events") for url in requested)
    assert not any(url.endswith(f"/api/v1/jobs/{job_id}") for url in requested)

    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename.endswith(".png")
    with Image.open(download.path()) as image:
        assert image.format == "PNG"
        assert max(image.size) == 64

    assert problems == []


def test_bad_field_is_shown_next_to_it(page: Page, problems: list[str]):
    page.goto("/")
    page.set_input_files("#field-content", str(PHOTO))
    page.check("#field-style_preset-the_scream")
    fill_small_job(page, size="5")
    page.fill("#field-style_weight", "2000000")
    page.fill("#field-seed", "7")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#submit")
    assert answer.value.status == 422
    page.wait_for_load_state()

    error = field_box(page, "size").locator("[data-error-for=size]")
    expect(error).to_be_visible()
    expect(error).not_to_have_text("")
    expect(page.locator("#field-size")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("[data-error-for]")).to_have_count(1)  # nothing else is wrong
    # What was typed is still there.
    expect(page.locator("#field-size")).to_have_value("5")
    expect(page.locator("#field-iterations")).to_have_value("20")
    expect(page.locator("#field-style_weight")).to_have_value("2000000")
    expect(page.locator("#field-weights")).to_have_value("random")
    expect(page.locator("#field-seed")).to_have_value("7")
    expect(page.locator("#field-style_preset-the_scream")).to_be_checked()
    expect(page.locator("details#advanced")).to_have_attribute("open", "")
    # Chromium logs the 422 itself as a failed load; nothing else may go wrong.
    assert [p for p in problems if "status of 422" not in p] == []


def test_missing_photo_is_shown_next_to_it(page: Page):
    page.goto("/")
    fill_small_job(page)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#submit")
    assert answer.value.status == 422
    page.wait_for_load_state()

    error = field_box(page, "content").locator("[data-error-for=content]")
    expect(error).to_be_visible()
    expect(error).not_to_have_text("")
    expect(page.locator("#field-content")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("[data-error-for=size]")).to_have_count(0)
    expect(page.locator("#field-style_preset-starry_night")).to_be_checked()


def test_recent_jobs_lists_the_job(page: Page, problems: list[str]):
    job_id = STATE.get("job_id")
    finished = job_id is not None
    if job_id is None:  # run on its own: submit a job through the form
        page.goto("/")
        page.set_input_files("#field-content", str(PHOTO))
        fill_small_job(page)
        page.click("#submit")
        page.wait_for_url(re.compile(r"/jobs/[^/?#]+$"))
        job_id = page.url.rstrip("/").rsplit("/", 1)[-1]

    page.goto("/jobs")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    expect(row).to_be_visible()
    link = row.locator(f"a.job-link[href$='/jobs/{job_id}']")
    expect(link).to_be_visible()
    if finished:
        expect(row.locator(".badge")).to_have_text("succeeded")
        expect(row.locator("img.thumb")).to_have_attribute("src", f"/api/v1/jobs/{job_id}/output.png")
    link.click()
    page.wait_for_url(re.compile(rf"/jobs/{job_id}$"))
    expect(page.locator("#status")).to_have_text(re.compile(r"^(queued|running|succeeded)$"))
    assert problems == []


def test_cancel_a_running_job(page: Page, problems: list[str], browser, server):
    # This page gets no event stream, so it must follow the job by polling.
    page.route(re.compile(r"/api/v1/jobs/[^/]+/events$"), lambda route: route.abort())
    page.goto("/")
    page.set_input_files("#field-content", str(PHOTO))
    fill_small_job(page, size="96", iterations="3000")
    page.click("#submit")
    page.wait_for_url(re.compile(r"/jobs/[^/?#]+$"))
    expect(page.locator("#status")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#cancel")).to_be_visible()
    job_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    cancel_url = f"{server}/api/v1/jobs/{job_id}/cancel"

    # Someone else with the link may watch, but gets no Cancel button, and the API refuses a
    # cancel from their browser, token and all (its cookie did not submit the job).
    stranger = browser.new_context(base_url=server)
    watcher = stranger.new_page()
    watcher.goto(page.url)
    expect(watcher.locator("#status")).to_have_text("running")
    expect(watcher.locator("#cancel")).to_have_count(0)
    refused = watcher.evaluate(
        """async (url) => (await fetch(url, {method: "POST", headers: {
        "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content}})).status""",
        cancel_url,
    )
    assert refused == 403
    stranger.close()
    # A page on another site, in the submitter's own browser, posts a form to the cancel URL:
    # the browser holds the SameSite cookie back, and no other site can send the CSRF header.
    evil = page.context.new_page()
    evil.route(
        "http://evil.test/",
        lambda route: route.fulfill(
            content_type="text/html",
            body=(f'<form method="post" action="{cancel_url}"><button id="prize">Win a prize</button></form>'),
        ),
    )
    evil.goto("http://evil.test/")
    with evil.expect_response(cancel_url) as forged:
        evil.click("#prize")
    assert forged.value.status == 403
    evil.close()
    expect(page.locator("#status")).to_have_text("running")

    # While it runs, a second job waits in the queue; canceling that one ends it at once.
    other = page.context.new_page()
    other.goto("/")
    other.set_input_files("#field-content", str(PHOTO))
    fill_small_job(other, size="96", iterations="3000")
    other.click("#submit")
    other.wait_for_url(re.compile(r"/jobs/[^/?#]+$"))
    expect(other.locator("#status")).to_have_text("queued")
    expect(other.locator("#queue-position")).to_be_visible()
    expect(other.locator("#queue-position")).to_contain_text("Next in line")
    other.click("#cancel")
    expect(other.locator("#status")).to_have_text("canceled")
    expect(other.locator("#cancel")).to_be_hidden()
    expect(other.locator("#queue-position")).to_be_hidden()
    # Once it is over, its owner may delete it, images and all.
    other_id = other.url.rstrip("/").rsplit("/", 1)[-1]
    other.once("dialog", lambda dialog: dialog.accept())
    other.click("#delete")
    other.wait_for_url(re.compile(r"/jobs$"))
    expect(other.locator(f"tr[data-job-id='{other_id}']")).to_have_count(0)
    assert other.request.get(f"/api/v1/jobs/{other_id}").status == 404
    other.close()

    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("canceled", timeout=30_000)
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#progress-text")).to_contain_text("canceled")
    # Only the refused event stream may have failed to load.
    assert [p for p in problems if "net::ERR_FAILED" not in p] == []


@pytest.fixture
def short_streams(tmp_path, queue_name) -> str:
    """`impasto web` alone (no worker: a job stays queued) whose event streams end after 1.5 s."""
    env = service_env(
        {
            "IMPASTO_DATA_DIR": str(tmp_path / "data"),
            "IMPASTO_BROKER_URL": SYSTEM_REDIS_URL,
            "IMPASTO_QUEUE": queue_name,
            "IMPASTO_EVENT_STREAM_LIMIT": "1.5",
        }
    )
    upgrade(load_settings(env).database_url)
    port = free_port()
    log = tmp_path / "web.log"
    process = start(["web", "--port", str(port), "--workers", "1"], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/healthz", process, log, timeout=START_TIMEOUT_S)
        yield base
    finally:
        stop(process)
        connection = redis.Redis.from_url(SYSTEM_REDIS_URL)
        connection.delete(*load_settings(env).queues)
        connection.close()


def test_a_live_page_opens_a_new_stream_when_the_server_ends_one(browser, short_streams):
    base = short_streams
    job = requests.post(
        f"{base}/api/v1/jobs",
        files={"content": ("photo.jpg", PHOTO.read_bytes())},
        data={"style_preset": "starry_night"},
        timeout=30,
    ).json()
    context = browser.new_context(base_url=base)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    streams, polls = [], []
    job_url = f"{base}/api/v1/jobs/{job['id']}"
    page.on("request", lambda r: streams.append(r.url) if r.url == job_url + "/events" else None)
    page.on("request", lambda r: polls.append(r.url) if r.url == job_url else None)
    try:
        page.goto(f"/jobs/{job['id']}")
        expect(page.locator("#status")).to_have_text("queued")
        for _ in range(100):  # two stream ends take about 3 s
            if len(streams) >= 3:
                break
            page.wait_for_timeout(100)
        assert len(streams) >= 3, f"{len(streams)} stream(s) opened: the page stopped listening"
        assert polls == [], "the page fell back to polling after a normal end of the stream"
        # Still live, on the stream: a cancel made elsewhere reaches the page without a poll.
        canceled = requests.post(f"{job_url}/cancel", headers={"X-Job-Token": job["token"]}, timeout=10)
        assert canceled.json()["status"] == "canceled"
        expect(page.locator("#status")).to_have_text("canceled", timeout=10_000)
        assert polls == [] and problems == []
    finally:
        context.close()


def test_compare_settings_make_a_sweep_whose_grid_fills_in(page: Page, problems: list[str]):
    page.goto("/")
    page.set_input_files("#field-content", str(PHOTO))
    fill_small_job(page, iterations="8")
    page.check("#field-compare")
    page.select_option("#field-axis_1_name", "style_weight")
    page.fill("#field-axis_1_values", "0.1, 10")
    page.click("#submit")

    page.wait_for_url(re.compile(r"/sweeps/[^/?#]+$"))
    cells = page.locator(".sweep-cell")
    expect(cells).to_have_count(2)
    expect(page.locator("thead th")).to_have_text(["0.1", "10"])
    expect(page.locator("#sweep-status")).to_have_text("succeeded", timeout=2 * JOB_TIMEOUT_MS)
    expect(page.locator("#sweep-done")).to_have_text("2 of 2 done")
    # Each cell shows its own output (the event stream brought it) and links to its job's page.
    pictures = page.locator(".sweep-picture")
    expect(pictures.nth(1)).to_have_attribute("src", re.compile(r"/api/v1/jobs/[^/]+/output\.png$"))
    page.wait_for_function("[...document.images].every(img => img.hidden || (img.complete && img.naturalWidth > 0))")
    sources = pictures.evaluate_all("els => els.map(e => e.getAttribute('src'))")
    assert len(set(sources)) == 2, sources
    with page.expect_download() as info:
        page.click("#sheet-download")
    with Image.open(info.value.path()) as sheet:
        assert sheet.format == "PNG" and sheet.width > 2 * 64
    page.locator(".sweep-link").first.click()
    page.wait_for_url(re.compile(r"/jobs/[^/?#]+$"))
    expect(page.locator("#status")).to_have_text("succeeded")
    assert problems == []


def test_a_bad_comparison_is_shown_in_the_compare_settings(page: Page, problems: list[str]):
    page.goto("/")
    page.set_input_files("#field-content", str(PHOTO))
    fill_small_job(page)
    page.check("#field-compare")
    page.fill("#field-axis_1_values", "1, -5")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#submit")
    assert answer.value.status == 422
    error = page.locator(".compare [data-error-for=axes]")
    expect(error).to_contain_text("axis style_weight, value '-5'")
    expect(page.locator("#field-compare")).to_be_checked()
    expect(page.locator("#field-axis_1_values")).to_have_value("1, -5")
    assert [p for p in problems if "status of 422" not in p] == []
