"""Security: unguessable job ids, job tokens, API keys and their quotas, the per-address limit
(also across gunicorn processes), CSRF and the browser's cookie, the security headers, and
storage keys that no upload can choose.

Flask's test client with SQLite, a local folder and this machine's Redis (each test on a queue
of its own, which also names its limit counters); the cross-process limit with real
`impasto web` servers under gunicorn.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import redis
import requests
from sqlalchemy import func, select, update

from shared import cli
from shared.jobs import add_snapshot
from shared.keys import Limit, LimitExceeded, RateLimiter, create_key, revoke_key
from shared.launcher import free_port
from shared.migrate import upgrade
from shared.models import ApiKey, Job, Snapshot, new_job_id
from shared.settings import load_settings
from shared.storage import job_key
from tests.conftest import PHOTO, SYSTEM_REDIS_URL
from tests.helpers import form_submit, form_token, png
from tests.servers import service_env, start, stop, wait_for_http
from web.access import BROWSER_COOKIE, client_address
from web.app import create_app


@pytest.fixture
def make_app(make_settings):
    def make(**env):
        settings = make_settings(**env)
        upgrade(settings.database_url)
        return create_app(settings)

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def sessions(app):
    return app.extensions["impasto"].sessions


@pytest.fixture(autouse=True)
def forget_redis(queue_name):
    """Drop this test's queue and limit counters from the shared Redis afterwards."""
    yield
    connection = redis.Redis.from_url(SYSTEM_REDIS_URL)
    connection.delete(queue_name, *connection.scan_iter(f"impasto:{queue_name}:*"))
    connection.close()


def api_submit(client, headers=None, address="127.0.0.1", **fields):
    data = {"content": (io.BytesIO(png()), "photo.png"), "style_preset": "starry_night", **fields}
    return client.post(
        "/api/v1/jobs",
        data=data,
        headers=headers or {},
        environ_base={"REMOTE_ADDR": address},
        content_type="multipart/form-data",
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def job_count(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Job))


# --- job ids and tokens -------------------------------------------------------------------------


def test_job_ids_are_128_random_bits():
    ids = [new_job_id() for _ in range(4000)]
    assert len(set(ids)) == len(ids)
    raw = np.frombuffer(b"".join(base64.urlsafe_b64decode(i + "==") for i in ids), np.uint8).reshape(len(ids), -1)
    assert raw.shape[1] == 16
    # Each of the 128 bits is set in about half of the ids (4000 draws: 0.5 +- 0.008 per sigma).
    ones = np.unpackbits(raw, axis=1).mean(axis=0)
    assert 0.44 < ones.min() and ones.max() < 0.56


def test_the_token_is_given_once_and_only_its_hash_is_kept(client, sessions):
    first, second = api_submit(client).get_json(), api_submit(client).get_json()
    assert len(base64.urlsafe_b64decode(first["id"] + "==")) == 16  # the API uses the random ids
    token = first["token"]
    assert token != second["token"] and len(base64.urlsafe_b64decode(token)) == 24
    with sessions() as session:
        row = session.get(Job, first["id"])
    assert row.token_hash == sha256(token) and row.owner is None
    client.post(f"/api/v1/jobs/{first['id']}/cancel", headers={"X-Job-Token": token})
    for url in (f"/api/v1/jobs/{first['id']}", f"/api/v1/jobs/{first['id']}/events", f"/jobs/{first['id']}"):
        answer = client.get(url)
        assert answer.status_code == 200 and token not in answer.get_data(as_text=True)


@pytest.mark.parametrize("sent", ["nothing", "a wrong token", "another job's token", "its hash"])
def test_cancel_and_delete_without_the_jobs_token_are_403(client, sent):
    job, other = api_submit(client).get_json(), api_submit(client).get_json()
    token = {
        "nothing": None,
        "a wrong token": "x" * 32,
        "another job's token": other["token"],
        "its hash": sha256(job["token"]),
    }[sent]
    headers = {"X-Job-Token": token} if token else {}
    for answer in (
        client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=headers),
        client.delete(f"/api/v1/jobs/{job['id']}", headers=headers),
    ):
        assert answer.status_code == 403
        assert (
            answer.get_json()["error"]["code"] == "forbidden" and "X-Job-Token" in answer.get_json()["error"]["message"]
        )
    assert client.get(f"/api/v1/jobs/{job['id']}").get_json()["status"] == "queued"  # untouched


def test_delete_takes_a_finished_job_with_every_file_and_row(app, client, sessions):
    job = api_submit(client).get_json()
    url, token = f"/api/v1/jobs/{job['id']}", {"X-Job-Token": job["token"]}
    refused = client.delete(url, headers=token)
    assert refused.status_code == 409 and "cancel it first" in refused.get_json()["error"]["message"]
    assert client.post(f"{url}/cancel", headers=token).status_code == 200
    # What a worker leaves behind: a snapshot and an output.
    storage = app.extensions["impasto"].storage
    snapshot, output = job_key(job["id"], "snapshots/000004.png"), job_key(job["id"], "output.png")
    for key in (snapshot, output):
        storage.put(key, png(), "image/png")
    with sessions() as session:
        add_snapshot(session, job["id"], 4, snapshot, None)
        session.execute(update(Job).where(Job.id == job["id"]).values(output_key=output))
        session.commit()
    assert len([p for p in (storage.root / "jobs" / job["id"]).rglob("*") if p.is_file()]) == 4  # 2 inputs

    assert client.delete(url, headers=token).status_code == 204
    assert not [p for p in (storage.root / "jobs" / job["id"]).rglob("*") if p.is_file()]
    with sessions() as session:
        assert session.get(Job, job["id"]) is None
        assert session.scalar(select(func.count()).select_from(Snapshot)) == 0
    assert client.get(url).status_code == 404 and client.delete(url, headers=token).status_code == 404


# --- API keys and quotas ------------------------------------------------------------------------


def test_keys_made_with_the_command_line_are_stored_hashed_and_can_be_revoked(
    client, sessions, monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("IMPASTO_DATA_DIR", str(tmp_path / "data"))  # the app's database
    assert cli.main(["keys", "create", "ci robot", "--jobs-per-day", "5"]) == 0
    key = capsys.readouterr().out.strip()
    assert re.fullmatch(r"imp_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    key_id = key.split("_")[1]
    with sessions() as session:
        row = session.get(ApiKey, key_id)
    assert row.key_hash == sha256(key) and row.jobs_per_day == 5 and row.name == "ci robot"
    assert cli.main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "ci robot" in listing and key.split("_", 2)[2] not in listing

    job = api_submit(client, bearer(key)).get_json()
    with sessions() as session:
        assert session.get(Job, job["id"]).owner == f"key:{key_id}"
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=bearer(key)).status_code == 200  # no token needed

    assert cli.main(["keys", "revoke", key_id]) == 0
    refused = api_submit(client, bearer(key))
    assert refused.status_code == 401 and refused.get_json()["error"]["message"] == "unknown or revoked API key"
    assert cli.main(["keys", "revoke", "nope"]) == 1


@pytest.mark.parametrize(
    "authorization",
    ["Bearer imp_0123456789ab_" + "x" * 43, "Bearer nonsense", "Bearer ", "Basic dXNlcjpwYXNz", "revoked"],
)
def test_a_bad_or_revoked_key_is_401(client, sessions, authorization):
    if authorization == "revoked":
        with sessions() as session:
            key, secret = create_key(session, "gone")
            revoke_key(session, key.id)
        authorization = f"Bearer {secret}"
    for answer in (
        api_submit(client, {"Authorization": authorization}),
        client.get("/api/v1/jobs", headers={"Authorization": authorization}),
    ):
        assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert job_count(sessions) == 0


def test_each_key_lists_and_changes_only_its_own_jobs(client, sessions):
    with sessions() as session:
        _, alice = create_key(session, "alice")
        _, bob = create_key(session, "bob")
    mine = [api_submit(client, bearer(alice)).get_json()["id"] for _ in range(2)]
    theirs = api_submit(client, bearer(bob)).get_json()["id"]
    api_submit(client)  # anonymous
    listed = client.get("/api/v1/jobs", headers=bearer(alice)).get_json()
    assert listed["total"] == 2 and [j["id"] for j in listed["jobs"]] == mine[::-1]
    assert client.get("/api/v1/jobs", headers=bearer(bob)).get_json()["total"] == 1
    assert client.get("/api/v1/jobs").status_code == 401  # no key, no list
    assert client.post(f"/api/v1/jobs/{theirs}/cancel", headers=bearer(alice)).status_code == 403
    assert client.delete(f"/api/v1/jobs/{theirs}", headers=bearer(alice)).status_code == 403


def test_a_key_over_its_quota_gets_429_with_retry_after(client, sessions):
    with sessions() as session:
        _, limited = create_key(session, "small", jobs_per_day=2)
        _, other = create_key(session, "other", jobs_per_day=2)
    assert api_submit(client, bearer(limited), size="5").status_code == 422  # a refused job does not count
    assert [api_submit(client, bearer(limited)).status_code for _ in range(2)] == [202, 202]
    over = api_submit(client, bearer(limited))
    assert over.status_code == 429 and 86_000 < int(over.headers["Retry-After"]) <= 86_400
    error = over.get_json()["error"]
    assert error["code"] == "quota_exceeded" and "2 jobs per 24 hours" in error["message"]
    assert api_submit(client, bearer(other)).status_code == 202  # each key has its own count
    assert job_count(sessions) == 3


def test_the_window_slides(queue_name):
    limiter = RateLimiter(redis.Redis.from_url(SYSTEM_REDIS_URL), queue_name)
    limit = Limit("addr:192.0.2.1", 2, 1)
    first = limiter.take(limit)
    limiter.take(limit)
    with pytest.raises(LimitExceeded) as over:
        limiter.take(limit)
    assert over.value.retry_after == 1
    limiter.give_back(limit, first)  # a submission that made no job
    limiter.take(limit)
    with pytest.raises(LimitExceeded):
        limiter.take(limit)
    time.sleep(1.1)  # both leave the window
    limiter.take(limit)
    limiter.take(limit)


def test_with_keys_required_anonymous_api_jobs_are_401_and_the_form_still_works(make_app):
    app = make_app(IMPASTO_REQUIRE_API_KEY=1)
    client = app.test_client()
    refused = api_submit(client)
    assert refused.status_code == 401 and "API keys only" in refused.get_json()["error"]["message"]
    with app.extensions["impasto"].sessions() as session:
        _, key = create_key(session, "robot")
    assert api_submit(client, bearer(key)).status_code == 202
    assert form_submit(client, form_token(client)).status_code == 303


# --- anonymous use: per client address --------------------------------------------------------


def test_anonymous_jobs_are_limited_per_address_across_api_and_form(make_app):
    app = make_app(IMPASTO_ANONYMOUS_JOBS_PER_HOUR=2)
    client = app.test_client()
    assert api_submit(client).status_code == 202
    assert form_submit(client, form_token(client)).status_code == 303  # the same count
    over = api_submit(client)
    assert over.status_code == 429 and 3500 < int(over.headers["Retry-After"]) <= 3600
    assert over.get_json()["error"]["code"] == "rate_limited"
    assert "at most 2 jobs per hour" in over.get_json()["error"]["message"]
    page = form_submit(client, form_token(client))
    assert page.status_code == 429 and page.headers["Retry-After"]
    assert 'data-error-for="form"' in page.get_data(as_text=True) and "at most 2 jobs per hour" in page.get_data(
        as_text=True
    )
    # No proxy is trusted: a forged X-Forwarded-For changes nothing.
    assert api_submit(client, {"X-Forwarded-For": "198.51.100.7"}).status_code == 429
    assert api_submit(client, address="192.0.2.44").status_code == 202  # another address
    with app.extensions["impasto"].sessions() as session:
        _, key = create_key(session, "robot")
    assert api_submit(client, bearer(key)).status_code == 202  # a key counts against its own quota


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "counted_as"),
    [
        (0, "127.0.0.1", "203.0.113.9", "127.0.0.1"),  # no proxy trusted: the header is the client's to forge
        (1, "127.0.0.1", "203.0.113.9", "203.0.113.9"),
        (1, "127.0.0.1", "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # a forged entry on the left is ignored
        (2, "127.0.0.1", "198.51.100.1, 203.0.113.9", "198.51.100.1"),
        (2, "127.0.0.1", "203.0.113.9", "127.0.0.1"),  # fewer entries than proxies: the peer
        (0, "2001:db8:1:2:aaaa::1", None, "2001:db8:1:2::/64"),  # one IPv6 subscriber, one count
        (0, "::ffff:192.0.2.1", None, "192.0.2.1"),
    ],
)
def test_the_address_a_client_is_counted_by(make_app, trusted, peer, forwarded, counted_as):
    app = make_app(IMPASTO_TRUSTED_PROXIES=trusted)
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    with app.test_request_context("/", headers=headers, environ_base={"REMOTE_ADDR": peer}):
        assert client_address() == counted_as


def test_with_redis_unreachable_a_submission_is_503_not_a_crash(make_app, sessions):
    app = make_app(IMPASTO_BROKER_URL="redis://127.0.0.1:9/0")
    client = app.test_client()
    answer = api_submit(client)
    assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "unavailable"
    assert answer.headers["Retry-After"]
    page = form_submit(client, form_token(client))
    assert page.status_code == 503 and "cannot be reached" in page.get_data(as_text=True)
    assert job_count(sessions) == 0


def test_the_anonymous_limit_holds_across_web_processes(tmp_path, queue_name):
    """Two `impasto web` servers (as on two machines), each with 2 gunicorn processes, take 8
    submissions from one address at once: exactly the 3 allowed become jobs."""
    env = service_env(
        {
            "IMPASTO_DATA_DIR": str(tmp_path / "data"),
            "IMPASTO_BROKER_URL": SYSTEM_REDIS_URL,
            "IMPASTO_QUEUE": queue_name,
            "IMPASTO_ANONYMOUS_JOBS_PER_HOUR": "3",
        }
    )
    upgrade(load_settings(env).database_url)
    servers = []
    try:
        for n in range(2):
            port, log = free_port(), tmp_path / f"web-{n}.log"
            servers.append(
                (f"http://127.0.0.1:{port}", start(["web", "--port", str(port), "--workers", "2"], env, log), log)
            )
        for base, process, log in servers:
            wait_for_http(f"{base}/healthz", process, log)

        def submit(n: int) -> requests.Response:
            with open(PHOTO, "rb") as photo:
                return requests.post(
                    f"{servers[n % 2][0]}/api/v1/jobs",
                    files={"content": ("photo.jpg", photo)},
                    data={"style_preset": "starry_night"},
                    headers={"Connection": "close"},
                    timeout=30,
                )

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(submit, range(8)))
    finally:
        for _, process, _ in servers:
            stop(process)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [202] * 3 + [429] * 5, [a.text for a in answers]
    assert all(a.headers["Retry-After"] for a in answers if a.status_code == 429)


# --- the browser: its cookie and CSRF -----------------------------------------------------------


def test_the_browser_cookie_is_httponly_samesite_and_set_once(client):
    cookie = client.get("/").headers["Set-Cookie"]
    assert cookie.startswith(f"{BROWSER_COOKIE}=")
    assert {"HttpOnly", "SameSite=Lax", "Path=/"} <= {part.strip() for part in cookie.split(";")}
    assert "Set-Cookie" not in client.get("/").headers


@pytest.mark.parametrize(
    "presented",
    ["A" * 43, "A" * 43 + "." + "B" * 43, "made-up", "planted-from-a-sibling-subdomain"],
    ids=["a made-up secret", "a made-up signature", "any word", "another word"],
)
def test_a_cookie_the_server_did_not_make_is_replaced_by_a_fresh_one(app, client, sessions, presented):
    client.set_cookie(BROWSER_COOKIE, presented)
    answer = client.get("/")
    fresh = answer.headers["Set-Cookie"].split(";")[0].removeprefix(f"{BROWSER_COOKIE}=")
    assert fresh != presented and re.fullmatch(r"[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}", fresh)
    # The page's token is for the fresh cookie: with it the form makes a job owned by that
    # cookie; the made-up one, sent again by a client that ignores Set-Cookie, submits nothing.
    token = re.search(r'name="csrf_token" value="([^"]+)"', answer.get_data(as_text=True)).group(1)
    assert client.get_cookie(BROWSER_COOKIE).value == fresh
    answer = form_submit(client, token)
    assert answer.status_code == 303
    with sessions() as session:
        assert session.scalars(select(Job.owner)).one() == f"browser:{sha256(fresh)}"
    assert client.get("/jobs").headers.get("Set-Cookie") is None  # a signed cookie is kept
    stubborn = app.test_client()
    stubborn.set_cookie(BROWSER_COOKIE, presented)
    stubborn_token = form_token(stubborn)  # the token of the fresh cookie it was given
    stubborn.set_cookie(BROWSER_COOKIE, presented)  # and ignored
    assert form_submit(stubborn, stubborn_token).status_code == 403
    assert job_count(sessions) == 1


def test_a_csrf_token_needs_the_servers_key(app, client, sessions):
    form_token(client)
    cookie = client.get_cookie(BROWSER_COOKIE).value
    # What a token derived from the cookie alone would be: whoever knows the cookie (or planted
    # it from a sibling subdomain) could make it.
    from_cookie = hmac.new(cookie.encode(), b"impasto csrf", hashlib.sha256).hexdigest()
    assert form_submit(client, from_cookie).status_code == 403
    assert job_count(sessions) == 0
    # The same cookie under another server key has other tokens: the key is what makes them.
    other = app.test_client()
    other.application.config["IMPASTO_SECRET_KEY"] = "another-key-" + "0" * 32
    assert form_token(client) != form_token(other)


def test_impasto_web_refuses_to_start_without_a_secret_key(tmp_path, queue_name):
    env = {"IMPASTO_DATA_DIR": str(tmp_path), "IMPASTO_BROKER_URL": SYSTEM_REDIS_URL, "IMPASTO_QUEUE": queue_name}
    for given, says in [
        ({}, "impasto web: error: IMPASTO_SECRET_KEY is not set: give every web process the same random key"),
        ({"IMPASTO_SECRET_KEY": "short"}, "impasto web: error: IMPASTO_SECRET_KEY is 5 characters: use at least 32"),
    ]:
        run = subprocess.run(
            [sys.executable, "-m", "shared.cli", "web", "--port", str(free_port())],
            env=service_env({**env, **given}, secret_key=False),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2 and run.stderr.startswith(says), run.stderr


@pytest.mark.parametrize(("trusted", "secure"), [(1, True), (0, False)])  # untrusted: anyone may send the header
def test_behind_a_trusted_https_proxy_the_cookie_is_secure(make_app, trusted, secure):
    client = make_app(IMPASTO_TRUSTED_PROXIES=trusted).test_client()
    cookie = client.get("/", headers={"X-Forwarded-Proto": "https"}).headers["Set-Cookie"]
    assert ("Secure" in {part.strip() for part in cookie.split(";")}) == secure


@pytest.mark.parametrize(
    "case", ["no token", "a wrong token", "a token that is not ASCII", "another browser's token", "no cookie"]
)
def test_the_form_without_its_csrf_token_is_403(app, client, sessions, case):
    token = form_token(client)
    stranger = app.test_client()
    sent = {
        "no token": None,
        "a wrong token": "0" * 64,
        "a token that is not ASCII": "é" * 43,
        "another browser's token": form_token(stranger),
        "no cookie": token,
    }[case]
    sender = app.test_client() if case == "no cookie" else client
    answer = form_submit(sender, sent)
    assert answer.status_code == 403 and "reload the page" in answer.get_data(as_text=True)
    assert job_count(sessions) == 0


def test_a_browser_owns_the_jobs_of_its_form(app, client, sessions):
    token = form_token(client)
    answer = form_submit(client, token)
    assert answer.status_code == 303
    job_id = answer.headers["Location"].rsplit("/", 1)[-1]
    secret = client.get_cookie(BROWSER_COOKIE).value
    with sessions() as session:
        row = session.get(Job, job_id)
    assert row.owner == f"browser:{sha256(secret)}" and row.token_hash is None
    assert 'id="cancel"' in client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert f'data-job-id="{job_id}"' in client.get("/jobs").get_data(as_text=True)

    stranger = app.test_client()
    form_token(stranger)
    assert 'id="cancel"' not in stranger.get(f"/jobs/{job_id}").get_data(as_text=True)  # anyone may watch
    assert f'data-job-id="{job_id}"' not in stranger.get("/jobs").get_data(as_text=True)


def test_a_browsers_cookie_cancels_only_from_its_own_page(app, client):
    token = form_token(client)
    job_id = form_submit(client, token).headers["Location"].rsplit("/", 1)[-1]
    url = f"/api/v1/jobs/{job_id}"
    stranger = app.test_client()
    stranger_token = form_token(stranger)
    # What another site could make the browser send: its cookie (were SameSite not to hold it
    # back), but not the header, which needs the page's token and a same-origin script.
    for sender, headers in [
        (client, {"Origin": "https://evil.example"}),
        (client, {"X-CSRF-Token": "0" * 64}),
        (client, {"X-CSRF-Token": stranger_token}),
        (stranger, {"X-CSRF-Token": stranger_token}),
    ]:
        assert sender.post(f"{url}/cancel", headers=headers).status_code == 403
        assert sender.delete(url, headers=headers).status_code == 403
    own = {"X-CSRF-Token": token}
    assert client.post(f"{url}/cancel", headers=own).get_json()["status"] == "canceled"
    assert client.delete(url, headers=own).status_code == 204


# --- headers and pages --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/jobs",
        "/jobs/{id}",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/inputs/0",
        "/api/v1/jobs/nope",
        "/jobs/nope",
        "/static/style.css",
        "/static/job.js",
        "/api/v1/openapi.json",
        "/healthz",
    ],
)
def test_every_answer_carries_the_security_headers(client, path):
    job = api_submit(client).get_json()
    answer = client.get(path.format(id=job["id"]))
    answer.close()  # a static file is streamed; a server closes it too
    csp = answer.headers["Content-Security-Policy"]
    assert {"default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"} <= {
        part.strip() for part in csp.split(";")
    }
    assert "unsafe" not in csp
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"


class InlineCode(HTMLParser):
    """What the CSP would refuse: inline scripts, inline styles, event-handler attributes."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if tag == "script" and "src" not in names and names.get("type") != "application/json":
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {name}=" for name in names if name == "style" or name.startswith("on")]


def test_the_pages_have_nothing_the_csp_would_refuse(client):
    job_id = form_submit(client, form_token(client)).headers["Location"].rsplit("/", 1)[-1]
    pages = [
        client.get("/"),
        client.get("/jobs"),
        client.get(f"/jobs/{job_id}"),
        client.get("/jobs/nope"),
        client.post("/jobs", data={"size": "5", "csrf_token": form_token(client)}, content_type="multipart/form-data"),
    ]
    for page in pages:
        parser = InlineCode()
        parser.feed(page.get_data(as_text=True))
        assert parser.found == [], (page.request.path, parser.found)


# --- storage keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../../../etc/passwd",
        "..\\..\\boot.ini",
        "/var/lib/impasto/x.png",
        "jobs/someone-else/output.png",
        "a" * 300 + ".png",
        "photo.html",
    ],
)
def test_storage_keys_are_made_by_the_service_never_by_the_upload(app, client, name):
    data = {"content": (io.BytesIO(png()), name, "text/html"), "style": (io.BytesIO(png()), name)}
    job = client.post("/api/v1/jobs", data=data, content_type="multipart/form-data").get_json()
    storage_root = app.extensions["impasto"].storage.root
    stored = sorted(p.relative_to(storage_root).as_posix() for p in Path(storage_root).rglob("*") if p.is_file())
    assert stored == [f"jobs/{job['id']}/inputs/0-content.png", f"jobs/{job['id']}/inputs/1-style.png"]
    shown = client.get(job["inputs"][0])
    assert shown.mimetype == "image/png"  # what the bytes are, not what the upload said


def test_each_cell_of_a_sweep_counts_against_the_limit(make_app, sessions):
    app = make_app(IMPASTO_ANONYMOUS_JOBS_PER_HOUR=3)
    client = app.test_client()

    def sweep(values):
        data = {"content": (io.BytesIO(png()), "photo.png"), "style_preset": "starry_night"}
        data["axes"] = json.dumps({"style_weight": values})
        return client.post("/api/v1/sweeps", data=data, content_type="multipart/form-data")

    assert sweep([1, -1]).status_code == 422  # refused: its two counts are given back
    assert sweep([1, 2]).status_code == 202  # two of three
    over = sweep([3, 4])
    assert over.status_code == 429 and over.get_json()["error"]["code"] == "rate_limited"
    assert api_submit(client).status_code == 202  # the third
    assert api_submit(client).status_code == 429
    with app.extensions["impasto"].sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 3
