"""The OpenAPI document against the app itself: schemathesis sends what the document allows and
what it forbids, in-process (WSGI), and checks that nothing gets a 5xx and that every answer is
as documented (status, headers, content type, body). Jobs it creates wait on a queue of their
own that no worker takes."""

from __future__ import annotations

import io

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.specs.openapi.checks import positive_data_acceptance

from shared.keys import create_key
from shared.migrate import upgrade
from tests.conftest import make_content, make_style
from tests.helpers import encode
from web.app import create_app

# The document lists the image types a file part may hold; schemathesis cannot draw an image,
# so it is given a few small real ones (for valid requests: invalid ones get random bytes).
schemathesis.openapi.media_type(
    "image/png", st.sampled_from([encode(make_content()), encode(make_style(24, 24).convert("P"))])
)
schemathesis.openapi.media_type("image/jpeg", st.just(encode(make_style(), "JPEG")))

# Rules between two fields, which JSON Schema cannot say (the document says them in words): a
# request valid field by field may break one, and get a 422 naming one of these fields.
# The content image is among them: too thin for the layers at the requested size.
CROSS_FIELD_RULES = {"style_scale", "snapshot_every", "style_layer_weights", "style_blend", "content"}
# A sweep's axes are JSON whose values must each be valid for their field, which JSON Schema
# cannot say of a string: a drawn `axes` may be refused, naming the field.
CROSS_FIELD_RULES |= {"axes"}

# Cases per operation and mode (valid, invalid), and sequences of calls: about 20 s in all.
EXAMPLES = 30
SEQUENCES = 15
QUIET = {
    "deadline": None,
    "database": None,
    "derandomize": True,
    "suppress_health_check": list(HealthCheck),
    "print_blob": False,
}


@pytest.fixture
def app(make_settings):
    settings_ = make_settings(
        IMPASTO_MAX_UPLOAD_BYTES=2_000_000,
        IMPASTO_MAX_STYLES=2,
        IMPASTO_ANONYMOUS_JOBS_PER_HOUR=0,
        IMPASTO_EVENT_STREAM_LIMIT=0.1,  # a queued job's event stream ends at once
    )
    upgrade(settings_.database_url)
    yield create_app(settings_)
    connection = redis.Redis.from_url(settings_.broker_url)
    connection.delete(*settings_.queues)
    connection.close()


def as_multipart_sends_it(case) -> None:
    """What schemathesis means to send, as multipart sends it. Skipped, as not the invalid
    requests they were drawn as:
    - a list with no items, which sends no part at all: as if the field were left out;
    - a single value for a list field, which is a list of one;
    - a blank value (or list item), which the document says takes its default, as if left out
      (in words: JSON Schema cannot say it of a number without letting every string through).
    And one image drawn for the array `style` from the media types above is sent as a part
    with no filename (a text field, not a file), so it is made the list the document says."""
    if not isinstance(case.body, dict):
        return
    operation = case.operation.schema.raw_schema["paths"][case.operation.path][case.operation.method]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    lists = {name for name, field in form["properties"].items() if field.get("type") == "array"} - {"style"}
    for name, value in case.body.items():
        values = value if isinstance(value, list) else [value]
        if not values or (name in lists and not isinstance(value, list)) or "" in values:
            reject()
    if isinstance(case.body.get("style"), bytes):
        case.body["style"] = [case.body["style"]]


def valid_submissions_are_accepted(ctx, response, case) -> None:
    """schemathesis' positive_data_acceptance, but for the rules between fields."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return
    assert response.status_code == 422, f"a valid submission got {response.status_code}"
    fields = {problem["field"] for problem in response.json()["error"]["details"]}
    assert fields <= CROSS_FIELD_RULES, f"a valid submission was refused: {response.json()['error']}"


def checks_for(case) -> dict:
    if case.operation.method == "post" and case.operation.path in ("/api/v1/jobs", "/api/v1/sweeps"):
        return {"excluded_checks": [positive_data_acceptance], "additional_checks": [valid_submissions_are_accepted]}
    return {}


def test_every_operation_answers_as_documented(app):
    """Each operation on its own, with an API key (so that listing jobs gets past its 401)."""
    with app.extensions["impasto"].sessions() as session:
        _, key = create_key(session, "schemathesis")
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"apiKey": {"bearer": key}}}})
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=EXAMPLES, **QUIET)
            def run(case):
                as_multipart_sends_it(case)
                case.call_and_validate(**checks_for(case))

            try:
                run()
            except Unsatisfiable:  # no parameter the document constrains: nothing to break
                assert mode.is_negative, f"{operation.label}: no valid request could be made"
            except (Exception, BaseExceptionGroup) as err:  # every operation's failures, reported together
                failures.append(f"{operation.label} {mode.value}: {err}")
    assert not failures, "\n\n".join(failures)


def test_job_sequences_answer_as_documented(app):
    """Without a key: jobs are created, then the document's links are followed (the token the
    submission answered cancels its job; deleting a queued one is a 409)."""
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)

    class Jobs(schema.as_state_machine()):
        def before_call(self, case):
            as_multipart_sends_it(case)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(
                response, transport_kwargs=kwargs or None, recorder=getattr(self, "recorder", None), **checks_for(case)
            )

    Jobs.run(settings=settings(max_examples=SEQUENCES, stateful_step_count=6, **QUIET))


def _just_outside(bound: float, kind: str, direction: int) -> float:
    return bound + direction * (1 if kind == "integer" else max(abs(bound) * 1e-9, 1e-9))


def test_every_documented_limit_is_the_servers(app):
    """Each bound and choice the document gives a parameter, sent at the bound and just past it:
    accepted there, refused past it with a 422 naming the field (what random cases rarely hit)."""
    client = app.test_client()
    document = client.get("/api/v1/openapi.json").get_json()
    form = document["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    sent: list[tuple[str, object, bool]] = []  # (field, value, valid?)
    for name, field in form["properties"].items():
        kind = field.get("type")
        if kind in ("integer", "number"):
            if "minimum" in field:
                sent += [(name, field["minimum"], True), (name, _just_outside(field["minimum"], kind, -1), False)]
            if "exclusiveMinimum" in field:
                sent += [
                    (name, _just_outside(field["exclusiveMinimum"], kind, +1), True),
                    (name, field["exclusiveMinimum"], False),
                ]
            if "maximum" in field:
                sent += [(name, field["maximum"], True), (name, _just_outside(field["maximum"], kind, +1), False)]
            sent += [(name, "nan", False), (name, "inf", False), (name, "a", False)]
        elif "enum" in field and name != "style_preset":
            sent += [(name, choice, True) for choice in field["enum"]] + [(name, field["enum"][0] + "x", False)]
        elif kind == "array" and "enum" in field["items"]:
            choices = field["items"]["enum"]
            sent += [
                (name, choices[: field["maxItems"]], True),
                (name, choices[: field["maxItems"] + 1], False),
                (name, [choices[0], choices[0]], False),
                (name, [choices[0] + "x"], False),
            ]
    assert len(sent) > 60
    wrong = []
    for name, value, valid in sent:
        data = {
            # Square, so that size's minimum (16) still leaves conv5_1 its 16 px on the short side.
            "content": (io.BytesIO(encode(make_content(64, 64))), "photo.png"),
            "style_preset": "starry_night",
            name: [str(v) for v in value] if isinstance(value, list) else str(value),
        }
        response = client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")
        error = response.get_json().get("error") or {}
        if (response.status_code, error.get("field")) != ((202, None) if valid else (422, name)):
            wrong.append(f"{name}={value!r}: {response.status_code} {error}")
    assert not wrong, "\n".join(wrong)
