"""Images kept in S3, served by the web: a 302 to a presigned URL, or streamed (IMPASTO_S3_DOWNLOADS).

Against moto's S3 server as a real process (tests.test_storage's fixtures), with Flask's test
client and SQLite. The images are written the way the service writes them: the inputs as the
web's submission does (the form through Flask, or storage.put beside shared.jobs.create_job),
snapshots and output by the worker's own JobRunner (random VGG-19 weights, CPU, 48 px).
The presigned URLs are fetched with `requests`, as a browser would after the redirect.

moto checks neither signatures nor expiry, so the expiry is checked in the URL's signing
parameters rather than by waiting past it.
"""

from __future__ import annotations

import io
import threading
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import redis
import requests
from PIL import Image
from playwright.sync_api import expect
from werkzeug.serving import make_server

from shared.db import make_engine, session_factory
from shared.jobs import create_job
from shared.migrate import upgrade
from shared.models import SUCCEEDED, new_job_id
from shared.params import StyleParams
from shared.settings import load_settings
from shared.storage import S3Storage, job_key, open_storage
from tests.conftest import PAINTING, PHOTO, SYSTEM_REDIS_URL
from tests.helpers import form_submit, form_token, png
from web.app import CONTENT_SECURITY_POLICY, create_app
from worker.runner import JobRunner

AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def service(s3_server, tmp_path_factory):  # noqa: F811
    """The database and S3 prefix that this module's apps share, with one job run to success by
    a worker; yields (the environment of its settings, the job's id)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS.items():
            patch.setenv(name, value)
        boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="impasto")
        env = {
            "IMPASTO_DATA_DIR": str(tmp_path_factory.mktemp("s3-downloads")),
            "IMPASTO_BROKER_URL": SYSTEM_REDIS_URL,
            "IMPASTO_STORAGE_URL": f"s3://impasto/{uuid.uuid4().hex}",
            "IMPASTO_S3_ENDPOINT_URL": s3_server,
        }
        settings = load_settings(env)
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        try:
            yield env, run_a_job(JobRunner(settings, session_factory(engine), storage_of(env), device="cpu"))
        finally:
            engine.dispose()


def storage_of(env: dict[str, str]) -> S3Storage:
    return open_storage(env["IMPASTO_STORAGE_URL"], s3_endpoint_url=env["IMPASTO_S3_ENDPOINT_URL"])


def queue_a_job(sessions, storage) -> str:
    """What the web's submission leaves: the inputs in storage under generated keys, a queued row."""
    job_id = new_job_id()
    inputs = {
        "content": {"key": job_key(job_id, "inputs/0-content.jpg"), "name": "photo.jpg", "content_type": "image/jpeg"},
        "styles": [
            {"key": job_key(job_id, "inputs/1-style.jpg"), "name": "painting.jpg", "content_type": "image/jpeg"}
        ],
        "style_preset": None,
    }
    storage.put(inputs["content"]["key"], PHOTO.read_bytes(), "image/jpeg")
    storage.put(inputs["styles"][0]["key"], PAINTING.read_bytes(), "image/jpeg")
    params = StyleParams(size=48, iterations=4, snapshot_every=2, weights="random")
    with sessions() as session:
        return create_job(session, job_id=job_id, params=params.model_dump(mode="json"), inputs=inputs).id


def run_a_job(runner: JobRunner) -> str:
    job_id = queue_a_job(runner.sessions, runner.storage)
    assert runner.run(job_id) == SUCCEEDED
    return job_id


@pytest.fixture
def make_app(service, queue_name):
    """An app on the module's database and bucket, with these IMPASTO_* variables on top."""
    env, _ = service

    def make(**overrides):
        return create_app(
            load_settings(
                {**env, "IMPASTO_QUEUE": queue_name, **{name: str(value) for name, value in overrides.items()}}
            )
        )

    yield make
    queues = load_settings({**env, "IMPASTO_QUEUE": queue_name}).queues
    connection = redis.Redis.from_url(SYSTEM_REDIS_URL)  # what the form's submissions left there
    connection.delete(*queues, *connection.scan_iter(f"impasto:{queue_name}:*"))
    connection.close()


@pytest.fixture
def job(service, make_app):
    """The worker's job as the API shows it (its snapshots' and output's URLs)."""
    _, job_id = service
    return make_app(IMPASTO_S3_DOWNLOADS="stream").test_client().get(f"/api/v1/jobs/{job_id}").get_json()


def stored(service, key_name: str) -> bytes:
    env, job_id = service
    return storage_of(env).get(job_key(job_id, key_name))


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


# --- presigned URLs -----------------------------------------------------------------------------


def test_a_presigned_url_reads_the_object_with_its_type_and_download_name(s3):  # noqa: F811
    s3.put("jobs/a/output.png", png(), "application/octet-stream")
    url = s3.presigned_url("jobs/a/output.png", 60, content_type="image/png", download_name="impasto-a.png")
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200 and answer.content == png()
    assert answer.headers["Content-Type"] == "image/png"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="impasto-a.png"'
    assert "Content-Disposition" not in requests.get(s3.presigned_url("jobs/a/output.png", 60), timeout=10).headers
    with pytest.raises(ValueError, match="not a storage key"):
        s3.presigned_url("../other-bucket/x", 60)


# --- redirect mode (the default) ----------------------------------------------------------------


def test_images_redirect_to_s3_which_serves_the_workers_pngs(service, job, make_app, s3_server):  # noqa: F811
    client = make_app().test_client()
    assert [s["iteration"] for s in job["snapshots"]] == [2] and job["status"] == SUCCEEDED
    images = [
        (job["output_url"], "attempt-1/output.png"),
        (job["snapshots"][0]["url"], "attempt-1/snapshots/000002.png"),
    ]
    for url, key_name in images:
        answer = client.get(url)
        assert answer.status_code == 302 and answer.headers["Cache-Control"] == "private, no-store"
        location = answer.headers["Location"]
        assert location.startswith(f"{s3_server}/impasto/")
        image = requests.get(location, timeout=10)
        assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
        assert image.content == stored(service, key_name)
        assert Image.open(io.BytesIO(image.content)).format == "PNG"
        assert "Content-Disposition" not in image.headers
    content = requests.get(client.get(job["inputs"][0]).headers["Location"], timeout=10)
    assert content.headers["Content-Type"] == "image/jpeg" and content.content == PHOTO.read_bytes()


def test_a_download_is_an_attachment_from_s3(job, make_app):
    client = make_app().test_client()
    for url, name in [
        (job["output_url"], f"impasto-{job['id']}.png"),
        (job["snapshots"][0]["url"], f"impasto-{job['id']}-2.png"),
    ]:
        answer = client.get(url + "?download=1")
        assert answer.status_code == 302
        image = requests.get(answer.headers["Location"], timeout=10)
        assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
        assert image.headers["Content-Disposition"] == f'attachment; filename="{name}"'


def test_the_public_endpoint_names_the_host_browsers_reach(job, make_app, s3_server):  # noqa: F811
    public = s3_server.replace("127.0.0.1", "localhost")  # the same server, by another name
    client = make_app(IMPASTO_S3_PUBLIC_ENDPOINT_URL=public).test_client()
    location = client.get(job["output_url"]).headers["Location"]
    assert urlsplit(location).netloc == urlsplit(public).netloc != urlsplit(s3_server).netloc
    assert requests.get(location, timeout=10).headers["Content-Type"] == "image/png"
    assert f"img-src 'self' data: blob: {public};" in client.get("/").headers["Content-Security-Policy"]


@pytest.mark.parametrize("expiry", [None, 10])
def test_urls_are_signed_now_and_expire_after_the_setting(job, make_app, expiry):
    client = make_app(**({"IMPASTO_S3_URL_EXPIRY": expiry} if expiry else {})).test_client()
    signed = query(client.get(job["output_url"]).headers["Location"])
    assert signed["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and signed["X-Amz-SignedHeaders"] == "host"
    assert signed["X-Amz-Expires"] == str(expiry or 3600)
    at = datetime.strptime(signed["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - at).total_seconds()) < 60
    assert signed["X-Amz-Credential"].endswith("/us-east-1/s3/aws4_request")


# --- stream mode --------------------------------------------------------------------------------


def test_stream_mode_serves_the_bytes_from_the_web(service, job, make_app):
    client = make_app(IMPASTO_S3_DOWNLOADS="stream").test_client()
    answer = client.get(job["output_url"] + "?download=1")
    assert answer.status_code == 200 and answer.mimetype == "image/png"
    assert answer.data == stored(service, "attempt-1/output.png")
    assert answer.headers["Cache-Control"] == "private, max-age=3600"
    assert answer.headers["Content-Disposition"] == f'attachment; filename="impasto-{job["id"]}.png"'
    assert client.get(job["snapshots"][0]["url"]).data == stored(service, "attempt-1/snapshots/000002.png")


# --- the page's Content-Security-Policy ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["redirect", "stream"])
def test_the_csp_adds_the_s3_origin_to_images_only_when_redirecting(job, make_app, s3_server, mode):  # noqa: F811
    client = make_app(IMPASTO_S3_DOWNLOADS=mode).test_client()
    expected = (
        CONTENT_SECURITY_POLICY.replace("img-src 'self' data: blob:", f"img-src 'self' data: blob: {s3_server}")
        if mode == "redirect"
        else CONTENT_SECURITY_POLICY
    )
    for url in ("/", f"/jobs/{job['id']}", job["output_url"], "/api/v1/jobs/nope"):
        assert client.get(url).headers["Content-Security-Policy"] == expected, url


def test_the_job_page_shows_the_pictures_from_s3_in_chromium(browser, job, make_app, s3_server):  # noqa: F811
    """What the CSP is for: a real browser follows the redirects and the policy lets the images in."""
    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    context = browser.new_context(base_url=f"http://127.0.0.1:{server.server_port}")
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        problems: list[str] = []  # a CSP violation is a console error
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: problems.append(str(err)))
        images: list[str] = []
        page.on("response", lambda r: images.append(r.url) if r.request.resource_type == "image" else None)
        page.goto(f"/jobs/{job['id']}")
        expect(page.locator("#snapshots img.snapshot")).not_to_have_count(0)  # job.js adds them
        shown = page.locator("img:not([hidden])")
        for index in range(shown.count()):  # loaded, or refused
            expect(shown.nth(index)).to_have_js_property("complete", True)
        assert 0 not in shown.evaluate_all("images => images.map(img => img.naturalWidth)"), problems
        assert page.locator("#output").evaluate("img => Math.max(img.naturalWidth, img.naturalHeight)") == 48
        assert problems == []
        assert sum(url.startswith(f"{s3_server}/impasto/") for url in images) >= 4  # output, snapshot, inputs
    finally:
        context.close()
        server.shutdown()
        thread.join()


# --- what may be seen, and what is gone ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["redirect", "stream"])
def test_another_browser_sees_as_before_and_changes_nothing(make_app, mode):
    app = make_app(IMPASTO_S3_DOWNLOADS=mode)
    owner, stranger = app.test_client(), app.test_client()
    token, stranger_token = form_token(owner), form_token(stranger)
    job_id = form_submit(owner, token).headers["Location"].rsplit("/", 1)[-1]
    url = f"/api/v1/jobs/{job_id}"
    shown = stranger.get(f"{url}/inputs/0")  # anyone with the id may watch, as before
    assert shown.status_code == (302 if mode == "redirect" else 200)
    for headers in ({}, {"X-CSRF-Token": stranger_token}, {"X-CSRF-Token": token}):
        for answer in (stranger.post(f"{url}/cancel", headers=headers), stranger.delete(url, headers=headers)):
            assert answer.status_code == 403 and "Location" not in answer.headers
    assert owner.post(f"{url}/cancel", headers={"X-CSRF-Token": token}).status_code == 200
    assert owner.delete(url, headers={"X-CSRF-Token": token}).status_code == 204
    for client in (owner, stranger):
        for path in ("inputs/0", "inputs/1", "output.png"):
            answer = client.get(f"{url}/{path}")
            assert answer.status_code == 404 and "Location" not in answer.headers
    if mode == "redirect":  # the URL handed out before is still signed, but its object is gone
        # (S3 answers 404, or 403 to a signer that may not list the bucket)
        assert requests.get(shown.headers["Location"], timeout=10).status_code in (403, 404)


@pytest.mark.parametrize("mode", ["redirect", "stream"])
def test_an_image_gone_from_storage_is_the_apis_404(service, make_app, mode):
    env, _ = service
    app = make_app(IMPASTO_S3_DOWNLOADS=mode)
    storage, sessions = storage_of(env), app.extensions["impasto"].sessions
    job_id = queue_a_job(sessions, storage)
    storage.delete(job_key(job_id, "inputs/1-style.jpg"))  # as a purge would, or a lifecycle rule
    answer = app.test_client().get(f"/api/v1/jobs/{job_id}/inputs/1")
    assert answer.status_code == 404 and "Location" not in answer.headers
    assert answer.get_json()["error"]["message"] == "the image is no longer stored"
    assert app.test_client().get(f"/api/v1/jobs/{job_id}/output.png").status_code == 404  # none yet
