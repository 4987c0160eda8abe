"""Clips on the running service, every part a real process: `impasto web`, two `impasto worker`
processes, SQLite and a Redis of the tests' own. A clip of six 64x48 frames is cut into two
segments of three (the second leading in with one frame), so the two workers paint it at once.
Leases and reconciler passes are short (3 s, 1 s) so that a killed worker is replaced in seconds."""

from __future__ import annotations

import io
import re
import signal
import time
import uuid
from fractions import Fraction
from pathlib import Path

import pytest
import requests
from PIL import Image

from shared.launcher import free_port
from shared.video import probe_clip
from tests.conftest import make_style
from tests.helpers import make_clip, panned
from tests.servers import service_env, start, stop, wait_for_http, wait_for_log

FRAMES = 6


class ClipService:
    def __init__(self, folder: Path, env: dict[str, str], base: str):
        self.folder, self.env, self.base = folder, env, base
        self.workers: list[tuple[object, Path]] = []

    def start_worker(self) -> None:
        log = self.folder / f"worker-{uuid.uuid4().hex[:6]}.log"
        worker = start(["worker"], self.env, log)
        wait_for_log(log, "ready.", worker)
        self.workers.append((worker, log))

    def stop_workers(self, sig: int = signal.SIGTERM) -> None:
        for worker, _ in self.workers:
            stop(worker, sig)
        self.workers.clear()

    def submit(self, clip: bytes, name: str = "clip.mp4", **fields: str) -> requests.Response:
        style = io.BytesIO()
        make_style().save(style, "PNG")
        data = {"size": "64", "iterations": "4", "scales": "1", "weights": "random", **fields}
        return requests.post(
            f"{self.base}/api/v1/jobs",
            timeout=60,
            files={"content": (name, clip), "style": ("style.png", style.getvalue())},
            data=data,
        )

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.base}/api/v1/jobs/{job_id}", timeout=10).json()

    def wait(self, job_id: str, until, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(0.2)
        logs = "\n".join(log.read_text(errors="replace")[-3000:] for _, log in self.workers)
        raise AssertionError(f"job {job_id} is {job}, still not there after {timeout} s\n{logs}")

    def get(self, url: str) -> requests.Response:
        return requests.get(self.base + url, timeout=30)


@pytest.fixture(scope="module")
def service(tmp_path_factory, own_redis):
    folder = tmp_path_factory.mktemp("clips")
    env = service_env(
        {
            "IMPASTO_DATA_DIR": str(folder / "data"),
            "IMPASTO_QUEUE": f"impasto-clips-{uuid.uuid4().hex[:8]}",
            "IMPASTO_BROKER_URL": own_redis,
            "IMPASTO_SEGMENT_FRAMES": "3",
            "IMPASTO_SEGMENT_OVERLAP": "1",
            "IMPASTO_JOB_LEASE": "3",
            "IMPASTO_RECONCILE_INTERVAL": "1",
            "IMPASTO_ENQUEUE_GRACE": "2",
        }
    )
    migrate = start(["db", "upgrade"], env, folder / "migrate.log")
    assert migrate.wait(timeout=120) == 0, (folder / "migrate.log").read_text()
    port = free_port()
    web = start(["web", "--port", str(port)], env, folder / "web.log")
    clips = ClipService(folder, env, f"http://127.0.0.1:{port}")
    try:
        wait_for_http(f"{clips.base}/healthz", web, folder / "web.log")
        yield clips
    finally:
        clips.stop_workers()
        stop(web)


@pytest.fixture
def two_workers(service):
    service.start_worker()
    service.start_worker()
    yield service
    service.stop_workers()


def test_a_clip_is_one_job_painted_by_two_workers_and_served_in_its_container(two_workers):
    service = two_workers
    response = service.submit(make_clip("mp4", panned(FRAMES), audio=True))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["clip"]["frames"] == FRAMES and response.json()["kind"] == "clip"
    done = service.wait(job_id, lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded", done
    assert done["clip"]["frames_done"] == FRAMES and done["progress"]["iterations"] == FRAMES
    clip = service.get(done["output_url"])
    assert clip.headers["Content-Type"] == "video/mp4" and done["output_url"].endswith("/output.mp4")
    info = probe_clip(clip.content)
    assert (info.container, info.frames, info.fps, info.audio, info.size) == (
        "mp4",
        FRAMES,
        Fraction(12),
        "aac",
        (64, 48),
    )
    for frame in range(FRAMES):
        png = service.get(f"/api/v1/jobs/{job_id}/frames/{frame}.png")
        assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
        with Image.open(io.BytesIO(png.content)) as image:
            assert image.size == (64, 48)
    assert service.get(f"/api/v1/jobs/{job_id}/frames/{FRAMES}.png").status_code == 404
    assert len(done["clip"]["frame_urls"]) == FRAMES and done["clip"]["latest_frame_url"]
    # Both workers painted a segment: the clip was spread, not queued behind itself.
    started = [re.findall(r"event=started worker=", log.read_text()) for _, log in service.workers]
    assert all(started), [log.read_text()[-2000:] for _, log in service.workers]


@pytest.mark.parametrize(
    "clip, message",
    [
        (lambda: make_clip("mp4", panned(3))[:400], "damaged clip|truncated or corrupt|no frame"),
        (lambda: make_clip("mp4", panned(3), encoder="mpeg4"), "this service takes H264"),
    ],
)
def test_a_corrupt_or_unsupported_clip_is_a_422_naming_the_content_field(service, clip, message):
    response = service.submit(clip())
    assert response.status_code == 422, response.text
    found = [e for e in response.json()["error"]["details"] if e["field"] == "content"]
    assert found and found[0]["code"] == "invalid_clip" and re.search(message, found[0]["message"]), found


def test_a_worker_killed_mid_clip_costs_only_its_current_frame(two_workers):
    service = two_workers
    response = service.submit(make_clip("mp4", panned(FRAMES)), iterations="30")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    running = service.wait(job_id, lambda j: j["clip"]["frames_done"] >= 2, timeout=300)
    before = {
        int(re.search(r"/frames/(\d+)\.png", url)[1]): service.get(url).content for url in running["clip"]["frame_urls"]
    }
    service.stop_workers(signal.SIGKILL)  # both workers, mid-frame, as when their machines die
    service.start_worker()
    service.start_worker()
    done = service.wait(job_id, lambda j: j["status"] not in ("queued", "running"), timeout=400)
    assert done["status"] == "succeeded", done
    assert probe_clip(service.get(done["output_url"]).content).frames == FRAMES
    # Frames finished before the kill were kept, not painted again (the boundary frame that the
    # next segment fades into is the only one whose served picture may change).
    for frame, png in before.items():
        if frame != 2:
            assert service.get(f"/api/v1/jobs/{job_id}/frames/{frame}.png").content == png, frame
    resumed = [m for _, log in service.workers for m in re.findall(r"event=resumed frame=(\d+)", log.read_text())]
    assert resumed, "no segment went on from its stored frames"


def test_the_web_form_takes_a_clip_and_its_page_plays_it_with_a_frame_strip(two_workers):
    service = two_workers
    browser = requests.Session()
    form = browser.get(service.base + "/", timeout=30).text
    assert "video/mp4" in form  # the file field offers clips
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
    fields = {"csrf_token": token, "style_preset": "starry_night", "size": "64", "iterations": "3", "scales": "1"}
    bad = browser.post(
        service.base + "/jobs", data=fields, files={"content": ("clip.webm", make_clip("webm")[:500])}, timeout=60
    )
    assert bad.status_code == 422 and re.search("damaged clip|truncated or corrupt|no frame", bad.text)  # not a crash
    sent = browser.post(
        service.base + "/jobs", data={**fields, "weights": "random"}, files={"content": ("clip.gif", make_clip("gif"))},
        timeout=60, allow_redirects=False,
    )  # fmt: skip
    assert sent.status_code in (302, 303), sent.text[-2000:]
    job_id = sent.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    done = service.wait(job_id, lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded" and done["output_url"].endswith("/output.gif"), done
    assert probe_clip(service.get(done["output_url"]).content).frames == 4
    page = browser.get(service.base + done["url"], timeout=30).text
    assert page.count('class="snapshot"') == 4 and "Frames" in page and "4 / 4 frames" in page
    webm = service.submit(make_clip("webm", panned(3), audio=True))
    done = service.wait(webm.json()["id"], lambda j: j["status"] not in ("queued", "running"))
    page = browser.get(service.base + done["url"], timeout=30).text
    assert '<video id="output"' in page and done["output_url"] in page and "Download WEBM" in page
    assert probe_clip(service.get(done["output_url"]).content).audio == "opus"


def test_canceling_a_clip_stops_its_segments_and_keeps_its_painted_frames(two_workers):
    service = two_workers
    response = service.submit(make_clip("mp4", panned(FRAMES)), iterations="30")
    assert response.status_code == 202, response.text
    job_id, token = response.json()["id"], response.json()["token"]
    service.wait(job_id, lambda j: j["clip"]["frames_done"] >= 1, timeout=300)
    canceled = requests.post(f"{service.base}/api/v1/jobs/{job_id}/cancel", headers={"X-Job-Token": token}, timeout=30)
    assert canceled.status_code in (200, 202), canceled.text
    done = service.wait(job_id, lambda j: j["status"] not in ("queued", "running"), timeout=120)
    assert done["status"] == "canceled" and done["output_url"] is None, done
    assert 1 <= done["clip"]["frames_done"] < FRAMES
    assert service.get(done["clip"]["frame_urls"][0]).status_code == 200
