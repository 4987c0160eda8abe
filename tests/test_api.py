"""The JSON API through Flask's test client, with SQLite, a local folder and this machine's
Redis as the broker (each test on a queue of its own; no worker takes the messages)."""

from __future__ import annotations

import io
import json
import threading

import pytest
import redis
from werkzeug.test import EnvironBuilder

from shared.keys import create_key
from shared.migrate import upgrade
from tests.conftest import PAINTING, PHOTO
from tests.helpers import cancel, files, form_token, png, post
from web.app import create_app
from web.services import Services


def test_submit_answers_202_with_the_job_and_enqueues_it(client, queued):
    response = post(
        client, {"size": "128", "iterations": "40", "weights": "random", "style_layers": "conv1_1, conv3_1"}
    )
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["queue_position"] == 0
    assert job["progress"] == {"iteration": 0, "iterations": 40, "fraction": 0.0, "eta_seconds": None}
    assert job["params"]["size"] == 128 and job["params"]["style_layers"] == ["conv1_1", "conv3_1"]
    assert job["params"]["style_weight"] == 1.0 and job["params"]["precision"] == "auto"  # defaults filled in
    assert job["snapshots"] == [] and job["output_url"] is None and job["error"] is None
    assert queued() == 1
    message = json.loads(
        redis.Redis.from_url(client.application.extensions["impasto"].settings.broker_url).lindex(
            client.application.extensions["impasto"].settings.queue_for(job["params"]["size"]), 0
        )
    )
    assert message["headers"]["task"] == "impasto.stylize" and job["id"] in message["headers"]["argsrepr"]
    shown = client.get(job["inputs"][0])
    assert shown.status_code == 200 and shown.data == PHOTO.read_bytes()

    again = client.get(f"/api/v1/jobs/{job['id']}").get_json()
    assert again["id"] == job["id"] and again["status"] == "queued"
    assert len(job["token"]) == 32 and "token" not in again  # the token is given once
    second = post(client, {"style_preset": "the_scream", "size": "128"}, styles=()).get_json()  # the same queue
    assert second["queue_position"] == 1 and second["style_preset"] == "the_scream"


def test_queue_position_counts_the_jobs_ahead_in_the_jobs_own_queue_as_workers_take_them(client, settings):
    """GPU and CPU jobs wait in separate lines; a job that went back to its queue waits behind
    the ones already there. Checked against the order a worker takes the messages from Redis."""
    from shared.jobs import claim_job, hand_back
    from shared.tasks import enqueue_stylize

    services = client.application.extensions["impasto"]
    broker = redis.Redis.from_url(settings.broker_url)
    sizes = {"gpu a": "512", "cpu b": "128", "gpu c": "512", "cpu d": "128", "gpu e": "512"}
    jobs = {
        name: post(client, {"size": size, "style_preset": "shipwreck"}, styles=()).get_json()
        for name, size in sizes.items()
    }
    positions = {name: job["queue_position"] for name, job in jobs.items()}
    assert positions == {"gpu a": 0, "cpu b": 0, "gpu c": 1, "cpu d": 1, "gpu e": 2}

    def taken_order(queue: str) -> list[str]:  # kombu LPUSHes and a worker BRPOPs: oldest first
        return [json.loads(m)["headers"]["argsrepr"] for m in broker.lrange(queue, 0, -1)][::-1]

    # A worker takes gpu a, then hands it back as it shuts down: its message goes to the back.
    assert jobs["gpu a"]["id"] in json.loads(broker.rpop(settings.gpu_queue))["headers"]["argsrepr"]
    with services.sessions() as session:
        assert claim_job(session, jobs["gpu a"]["id"], "w1")
        assert hand_back(session, jobs["gpu a"]["id"], "w1") == "queued"
    enqueue_stylize(services.celery, jobs["gpu a"]["id"], settings.gpu_queue)
    now = {name: client.get(f"/api/v1/jobs/{job['id']}").get_json()["queue_position"] for name, job in jobs.items()}
    assert now == {"gpu c": 0, "gpu e": 1, "gpu a": 2, "cpu b": 0, "cpu d": 1}
    for queue, names in [(settings.gpu_queue, ["gpu c", "gpu e", "gpu a"]), (settings.cpu_queue, ["cpu b", "cpu d"])]:
        order = taken_order(queue)
        assert len(order) == len(names) and all(jobs[n]["id"] in sent for n, sent in zip(names, order, strict=True))
    broker.delete(*settings.queues)
    broker.close()


@pytest.mark.parametrize(
    ("fields", "kw", "field", "says"),
    [
        ({"size": "5"}, {}, "size", "greater than or equal to 16"),
        ({"size": "2048"}, {}, "size", "at most 1024 on this service"),
        ({"size": "big"}, {}, "size", "valid integer"),
        ({"iterations": "1e9"}, {}, "iterations", ""),
        ({"style_weight": "nan"}, {}, "style_weight", "finite number"),
        ({"content_weight": "inf"}, {}, "content_weight", "finite number"),
        ({"colour": "red"}, {}, "colour", "unknown parameter 'colour'"),
        ({"style_layers": "conv9_9"}, {}, "style_layers", "unknown VGG-19 layer 'conv9_9'"),
        ({"weights": "/etc/passwd"}, {}, "weights", "use one of auto, imagenet, random"),
        ({"optimizer": "sgd"}, {}, "optimizer", "'lbfgs' or 'adam'"),
        ({"style_preset": "mona_lisa"}, {"styles": ()}, "style_preset", "unknown style 'mona_lisa'"),
        ({"style_preset": "the_scream"}, {}, "style_preset", "not both"),
        ({}, {"styles": ()}, "style", "upload a style image"),
        ({}, {"styles": (PAINTING, PAINTING, PAINTING)}, "style", "3 style images; at most 2"),
        ({"style_blend": "1 2"}, {}, "style_blend", "2 numbers for 1 style images"),
        ({}, {"content": b""}, "content", "empty"),
        ({}, {"content": b"<html><script>alert(1)</script></html>"}, "content", "not an image that can be read"),
        ({}, {"content": png()[:60]}, "content", "truncated"),
        ({}, {"styles": (png(9000, 9000, "P"),)}, "style", "over the limit"),
        ({}, {"content": png(10000, 4)}, "content", "512x1 px at size 512: its height of 1 px is too small"),
        ({"size": "1024"}, {"content": png(4, 10000)}, "content", "1x1024 px at size 1024: its width of 1 px"),
        ({"size": "16"}, {"content": png(64, 48)}, "content", "16x12 px at size 16: its height of 12 px"),
    ],
)
def test_bad_input_is_422_naming_the_field(client, queued, fields, kw, field, says):
    response = post(client, fields, **kw)
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["field"] == field and says in error["message"]
    assert queued() == 0  # nothing reaches a worker


def test_missing_content_is_422(client):
    response = client.post("/api/v1/jobs", data={"style_preset": "starry_night"}, content_type="multipart/form-data")
    assert response.status_code == 422 and response.get_json()["error"]["field"] == "content"


def test_a_repeated_content_file_is_422_naming_it(client, queued):
    data = {
        "content": [(io.BytesIO(PHOTO.read_bytes()), "one.jpg"), (io.BytesIO(png()), "two.png")],
        "style_preset": "shipwreck",
    }
    response = client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["field"] == "content" and "2 content images" in error["message"]
    assert queued() == 0


def raw_multipart(client, path: str, name: bytes, filename: bytes, extra: bytes = b""):
    """A multipart body written byte by byte, as a client that does not encode names in UTF-8
    sends it (the test client would encode them)."""
    body = (
        b'--B0UND\r\nContent-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + PHOTO.read_bytes() + b"\r\n"
        b'--B0UND\r\nContent-Disposition: form-data; name="style_preset"\r\n\r\nshipwreck\r\n'
        + extra
        + b"--B0UND--\r\n"
    )
    return client.post(path, data=body, content_type="multipart/form-data; boundary=B0UND")


@pytest.mark.parametrize(
    ("name", "filename"),
    [(b"content", b"ph\xe9oto.jpg"), (b"cont\xffent", b"photo.jpg")],
    ids=["latin-1 file name", "field name not UTF-8"],
)
def test_a_form_that_cannot_be_read_is_422_saying_so(client, queued, name, filename):
    response = raw_multipart(client, "/api/v1/jobs", name, filename)
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "unreadable_form" and error["field"] is None
    assert error["message"].startswith("the form could not be read") and "UTF-8" in error["message"]
    token = form_token(client)
    page = raw_multipart(
        client,
        "/jobs",
        name,
        filename,
        b'--B0UND\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n' + token.encode() + b"\r\n",
    )
    assert page.status_code == 422 and "the form could not be read" in page.get_data(as_text=True)
    assert queued() == 0
    # The same body with UTF-8 names is a job.
    assert raw_multipart(client, "/api/v1/jobs", b"content", "phéoto.jpg".encode()).status_code == 202


def test_a_file_name_with_folders_is_reduced_to_its_name(client, queued):
    data = {"content": (io.BytesIO(PHOTO.read_bytes()), "../../etc/evil.jpg"), "style_preset": "shipwreck"}
    job = client.post("/api/v1/jobs", data=data, content_type="multipart/form-data").get_json()
    services = client.application.extensions["impasto"]
    with services.sessions() as session:
        from shared.models import Job

        inputs = session.get(Job, job["id"]).inputs
    assert inputs["content"]["name"] == "evil.jpg"
    assert inputs["content"]["key"] == f"jobs/{job['id']}/inputs/0-content.jpg"


def post_oversized(client, path: str):
    """A 2.1 MB upload. The test client spools it to a temporary file that the app refuses
    unread, so the test closes it."""
    environ = EnvironBuilder(path=path, method="POST", data=files(content=b"\xff" * 2_100_000)).get_environ()
    try:
        return client.open(environ)
    finally:
        environ["wsgi.input"].close()


def test_an_upload_over_the_byte_limit_is_413_json(client, queued):
    response = post_oversized(client, "/api/v1/jobs")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "too_large"
    assert queued() == 0


def test_unknown_jobs_and_images_are_404_json(client):
    for url in (
        "/api/v1/jobs/nope",
        "/api/v1/jobs/nope/output.png",
        "/api/v1/jobs/nope/events",
        "/api/v1/jobs/nope/snapshots/1.png",
    ):
        response = client.get(url)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    assert client.post("/api/v1/jobs/nope/cancel").status_code == 404


def test_bad_paging_is_400(client, app):
    with app.extensions["impasto"].sessions() as session:
        _, key = create_key(session, "pager")
    for query in ("limit=0", "limit=x", "limit=5&limit=x", "limit=5&limit=6"):
        response = client.get(f"/api/v1/jobs?{query}", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 400 and response.get_json()["error"]["field"] == "limit", query


def test_cancel_a_queued_job_then_a_second_cancel_is_harmless(client, queued):
    job = post(client).get_json()
    response = cancel(client, job)
    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    assert cancel(client, job).get_json()["status"] == "canceled"


def test_events_of_a_finished_job_end_with_its_status(client, queued):
    job = post(client).get_json()
    cancel(client, job)
    response = client.get(f"/api/v1/jobs/{job['id']}/events")
    assert response.mimetype == "text/event-stream"
    events = [block for block in response.get_data(as_text=True).split("\n\n") if block.startswith("event:")]
    name, data = events[-1].split("\n", 1)
    assert name == "event: status" and json.loads(data.removeprefix("data: "))["status"] == "canceled"


def test_health_reports_database_and_broker(client, settings):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok", "database": "ok", "broker": "ok"}
    broken = (
        create_app(services=Services.from_settings(settings.with_broker("redis://127.0.0.1:9/0")))
        .test_client()
        .get("/healthz")
    )
    assert broken.status_code == 503 and broken.get_json()["broker"].startswith("unreachable")


def test_the_openapi_document_lists_every_route_and_parameter(client, app):
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    form = document["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    from shared.params import StyleParams

    assert set(StyleParams.model_fields) | {"content", "style", "style_preset", "style_mask"} == set(form["properties"])
    sweep = document["paths"]["/api/v1/sweeps"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(sweep["properties"]) == set(form["properties"]) | {"axes"}
    assert form["properties"]["size"]["minimum"] == 16
    routes = {
        rule.rule.replace("<job_id>", "{job_id}")
        .replace("<sweep_id>", "{sweep_id}")
        .replace("<int:iteration>", "{iteration}")
        .replace("<int:index>", "{index}")
        .replace("<int:frame>", "{frame}")
        .replace("<any(mp4, webm, gif):extension>", "{extension}")
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(("/api", "/healthz"))
    }
    assert routes == set(document["paths"])


def test_the_form_shows_its_errors_beside_the_fields(client, queued):
    response = client.post(
        "/jobs",
        data={"size": "5", "style_preset": "starry_night", "csrf_token": form_token(client)},
        content_type="multipart/form-data",
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert 'data-error-for="size"' in page and 'data-error-for="content"' in page
    assert queued() == 0


def test_the_form_says_when_the_upload_is_too_large(client, queued):
    response = post_oversized(client, "/jobs")
    assert response.status_code == 413
    assert 'data-error-for="content"' in response.get_data(as_text=True) and "over 2 MB" in response.get_data(
        as_text=True
    )


@pytest.mark.parametrize(
    "path", ["/api/v1/jobs/%00", "/api/v1/jobs/a%00b/events", "/jobs/%00", "/api/v1/jobs/" + "x" * 300]
)
def test_ids_that_cannot_exist_are_404_before_any_query(client, path):
    assert client.get(path).status_code == 404


def test_pages_answer_html_and_keep_error_headers(client):
    missing = client.get("/jobs/nope")
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert client.get("/jobs?page=100000000000000000000").status_code == 200
    wrong = client.delete("/api/v1/jobs")
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"] and wrong.get_json()["error"]


def test_the_job_json_names_no_worker_host(client, queued):
    assert "worker" not in post(client).get_json()


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        (
            {"iterations": "1000", "snapshot_every": "1"},
            "snapshot_every",
            "at most 100 snapshots per job; use 10 or more",
        ),
        ({"size": "512", "style_scale": "4"}, "style_scale", "at most 1024 on this service; use at most 2.00"),
    ],
)
def test_service_limits_beyond_the_params_model(client, queued, fields, field, says):
    response = post(client, fields)
    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == field and says in response.get_json()["error"]["message"]


def test_event_streams_past_the_limit_are_told_to_poll(client, queued, monkeypatch):
    job = post(client).get_json()
    streams = threading.BoundedSemaphore(1)
    monkeypatch.setattr("web.api._streams", streams)
    streams.acquire()  # one live page already holds the only stream
    response = client.get(f"/api/v1/jobs/{job['id']}/events")
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert f"GET /api/v1/jobs/{job['id']}" in response.get_json()["error"]["message"]


def test_a_stream_starts_with_one_status_event_and_ends_its_time_with_reconnect(make_settings, queued):
    settings = make_settings(IMPASTO_EVENT_STREAM_LIMIT="0.5")  # a queued job: the stream just times out
    upgrade(settings.database_url)
    client = create_app(settings).test_client()
    job = post(client).get_json()
    body = client.get(f"/api/v1/jobs/{job['id']}/events").get_data(as_text=True)
    names = [line for line in body.splitlines() if line.startswith("event:")]
    assert names == ["event: status", "event: reconnect"]
    assert json.loads(body.rstrip().rsplit("data: ", 1)[1])["id"] == job["id"]  # the Job, as every event


def test_every_kind_of_stream_ending_gives_its_place_back(client, queued, monkeypatch):
    job = post(client).get_json()
    cancel(client, job)
    streams = threading.BoundedSemaphore(1)
    monkeypatch.setattr("web.api._streams", streams)
    url = f"/api/v1/jobs/{job['id']}/events"
    client.get(url).close()  # read to the end
    client.head(url).close()  # a body never sent
    with client.get(url, buffered=False) as response:  # a client that leaves after one event
        next(iter(response.response))
    assert streams.acquire(blocking=False), "a stream kept its place"
