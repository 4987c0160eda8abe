"""The OpenAPI 3.1 document of the JSON API, its parameters derived from StyleParams."""

from __future__ import annotations

from functools import cache
from typing import Any

from shared.params import WEIGHT_CHOICES, StyleParams
from shared.settings import Settings

from .openapi_sweeps import sweep_form, sweep_paths, sweep_schemas
from .presets import PRESETS

STATUSES = ["queued", "running", "succeeded", "failed", "canceled"]
EVENTS = ["status", "progress", "snapshot", "reconnect"]
# The formats an upload is known by; the file's own bytes decide, not the part's Content-Type.
IMAGE_TYPES = "image/png, image/jpeg, image/webp, image/gif, image/bmp, image/tiff"
# A file in a multipart body, as OpenAPI 3.1 spells it (3.0's `format: binary`).
FILE = {"type": "string", "contentMediaType": "application/octet-stream"}


def _param_schemas(settings: Settings) -> dict[str, Any]:
    """StyleParams' fields as multipart form fields, with this service's limits; a blank or
    absent field takes its default."""
    schema = StyleParams.model_json_schema()
    fields: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        prop.pop("title", None)
        options = prop.pop("anyOf", None)
        if options:  # `X | None`: None means "the default", which is the field left out
            # The field's own keywords (its items' limits, ...) refine the option's.
            prop = {**next(o for o in options if o.get("type") != "null"), **prop}
        if prop.get("default") is None:
            prop.pop("default", None)
        fields[name] = prop
    fields["size"]["maximum"] = settings.max_size
    fields["iterations"]["maximum"] = settings.max_iterations
    fields["style_blend"]["maxItems"] = settings.max_styles
    fields["style_scale"]["description"] += f"; style_scale x size is at most {settings.max_size}"
    fields["snapshot_every"]["description"] += f"; at most {settings.max_snapshots} snapshots per job"
    fields["weights"] = {
        "type": "string",
        "enum": list(WEIGHT_CHOICES),
        "default": "auto",
        "description": "VGG-19 weights: auto (ImageNet if available, else seeded random "
        "with a warning), imagenet, or random",
    }
    return fields


def _job_schema() -> dict[str, Any]:
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    losses = {
        "type": ["object", "null"],
        "additionalProperties": {"type": "number"},
        "description": "weighted loss terms: content, style, tv, total",
    }
    return {
        "type": "object",
        "required": [
            "id",
            "status",
            "progress",
            "losses",
            "queue_position",
            "snapshots",
            "output_url",
            "error",
            "weights",
            "created_at",
            "started_at",
            "finished_at",
        ],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": STATUSES},
            "progress": {
                "type": "object",
                "required": ["iteration", "iterations", "fraction", "eta_seconds"],
                "properties": {
                    "iteration": {"type": "integer", "minimum": 0},
                    "iterations": {"type": "integer", "minimum": 1},
                    "fraction": {"type": "number", "minimum": 0, "maximum": 1},
                    "eta_seconds": {"type": ["number", "null"]},
                },
            },
            "losses": losses,
            "queue_position": {
                "type": ["integer", "null"],
                "description": "queued jobs ahead of this one in its own queue (GPU or CPU), in the order "
                "workers take them: a job sent again waits behind those already there (0: next); "
                "null unless queued",
            },
            "params": {"type": "object", "description": "every parameter, defaults filled in"},
            "style_preset": {"type": ["string", "null"]},
            "inputs": {
                "type": "array",
                "items": {"type": "string"},
                "description": "URLs of the content image, then the style images",
            },
            "style_masks": {
                "type": "array",
                "items": {"type": "string"},
                "description": "URLs of the style masks, one per style image in the same order; "
                "empty when the job has none",
            },
            "snapshots": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["iteration", "url"],
                    "properties": {"iteration": {"type": "integer"}, "url": {"type": "string"}},
                },
            },
            "output_url": {"type": ["string", "null"]},
            "error": {
                "type": ["object", "null"],
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "cancel_requested": {
                "type": "boolean",
                "description": "a cancel was asked for; a running job stops at its next iteration",
            },
            "weights": {"type": ["string", "null"], "description": "the VGG-19 weights actually used"},
            "weights_warning": {"type": ["string", "null"]},
            "attempts": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": nullable_time,
            "finished_at": nullable_time,
            "url": {"type": "string", "description": "the job's web page"},
            "kind": {
                "type": "string",
                "enum": ["image", "clip", "segment"],
                "description": "clip: the content was a clip, and `output_url` is the stylized clip; "
                "segment: a run of a clip's frames, painted by one worker",
            },
            "clip": {
                "type": ["object", "null"],
                "description": "a clip's frames (null for an image); progress counts frames",
                "required": ["frames", "frames_done", "fps", "container", "frame_urls", "latest_frame_url"],
                "properties": {
                    "frames": {"type": "integer", "minimum": 1},
                    "frames_done": {"type": "integer", "minimum": 0},
                    "fps": {"type": "number"},
                    "container": {"type": "string", "enum": ["mp4", "webm", "gif"]},
                    "size": {"type": "array", "items": {"type": "integer"}},
                    "audio": {"type": "boolean", "description": "the input's audio is copied into the output"},
                    "frame_urls": {"type": "array", "items": {"type": "string"}, "description": "painted frames"},
                    "latest_frame_url": {"type": ["string", "null"], "description": "the frame painted last"},
                },
            },
        },
    }


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "field"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": ["string", "null"]},
                    "details": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
    }


def _event_schema() -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1 has no `itemSchema`; as in 3.2, this describes each
    event, not the stream)."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": EVENTS},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": "#/components/schemas/Job"},
                "description": "the Job, as JSON",
            },
        },
    }


def _errors(*statuses: int, **descriptions: str) -> dict[str, Any]:
    """Error responses; `descriptions` (as `e503="..."`) replace the usual words for a status."""
    text = {
        400: "bad request",
        401: "no API key where one is needed, or an unknown or revoked one",
        403: "neither the job's token, nor the key or browser that submitted it",
        404: "no such job",
        409: "the job is already over",
        413: "upload too large",
        422: "a field is invalid; `field` names it",
        429: "over the key's daily quota, or the address's hourly limit without a key; Retry-After says "
        "when to try again",
        503: "the database or queue is unreachable (Retry-After says when to try again)",
    }
    text.update({int(key.removeprefix("e")): value for key, value in descriptions.items()})
    return {
        str(s): {
            "description": text[s],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for s in statuses
    }


def _job_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
    }


def _file_part(field: str, filename: str) -> dict[str, Any]:
    """A multipart file: a part with no filename is a text field, not an upload."""
    return {
        "contentType": IMAGE_TYPES,
        "headers": {
            "Content-Disposition": {
                "description": "a filename is required (only its last component is kept)",
                "schema": {"type": "string", "example": f'form-data; name="{field}"; filename="{filename}"'},
            }
        },
    }


def _job_links() -> dict[str, Any]:
    job_id = {"job_id": "$response.body#/id"}
    return {
        "getJob": {"operationId": "getJob", "parameters": job_id},
        "cancelJob": {
            "operationId": "cancelJob",
            "parameters": {**job_id, "header.X-Job-Token": "$response.body#/token"},
        },
        "deleteJob": {
            "operationId": "deleteJob",
            "parameters": {**job_id, "header.X-Job-Token": "$response.body#/token"},
        },
        "jobEvents": {"operationId": "jobEvents", "parameters": job_id},
        "getContent": {"operationId": "getInput", "parameters": {**job_id, "index": 0}},
    }


def _png(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


# With S3 storage and IMPASTO_S3_DOWNLOADS=redirect, images are a redirect to the S3 server.
_REDIRECT = {
    "302": {
        "description": "the image is on the S3 server: Location is a presigned URL that "
        "expires (IMPASTO_S3_URL_EXPIRY); fetch it at once, do not keep it",
        "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
    }
}


@cache
def openapi_document(settings: Settings) -> dict[str, Any]:
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    job_token = {
        "name": "X-Job-Token",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "the `token` of the answer to the job's submission; not needed with the API "
        "key that submitted it",
    }
    key_optional = [{}, {"apiKey": []}]
    form = {
        "type": "object",
        "required": ["content"],
        # JSON Schema cannot say this of a number without letting every string through.
        "description": "A parameter left blank (or a blank item of a list) takes its default, as if left out.",
        # A painting: uploaded, or a built-in one, not both. (The branches exclude each other, so
        # `anyOf` says `oneOf` without a generator having to test each value against both.)
        "anyOf": [
            {"required": ["style"], "properties": {"style_preset": False}},
            {"required": ["style_preset"], "properties": {"style": False}},
        ],
        "properties": {
            "content": {
                **FILE,
                "description": "the photo (PNG, JPEG, WebP, ...); scaled so its long side is `size`, its "
                "short side must keep the pixels the deepest layer needs (16 for conv5_1). Or a clip: an MP4 "
                "(H.264), a WebM (VP8/VP9) or an animated GIF of at most IMPASTO_MAX_FRAMES frames, told "
                "apart by its bytes; a damaged or unsupported one is a 422 with code invalid_clip",
            },
            "style": {
                "type": "array",
                "items": FILE,
                "minItems": 1,
                "maxItems": settings.max_styles,
                "description": "one or more paintings",
            },
            "style_preset": {"type": "string", "enum": list(PRESETS), "description": "a built-in painting"},
            "style_mask": {
                "type": "array",
                "items": FILE,
                "minItems": 1,
                "maxItems": settings.max_styles,
                "description": "optional: one grey-scale mask per style image (or one with `style_preset`), "
                "in the same order, resized to the output: white where that style applies, grey where it "
                "partly does, black where it does not; where no mask is white the photo is kept. A mask "
                "in colour, a number of masks other than the number of styles, or masks with a clip "
                "(clips are painted without them), is a 422 naming `style_mask`",
            },
            **_param_schemas(settings),
        },
        "additionalProperties": False,
    }
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Impasto",
            "version": "1",
            "description": "Neural style transfer jobs: submit a photo and a painting, watch the "
            "picture emerge, download it.",
        },
        "paths": {
            "/api/v1/jobs": {
                "post": {
                    "operationId": "createJob",
                    "summary": "Submit a job",
                    "description": "With an API key, the job is the key's and counts against its quota; "
                    "without one, against the client address's hourly limit. The answer's "
                    "`token` (given this once) cancels or deletes the job.",
                    "security": key_optional,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": form,
                                "encoding": {
                                    "content": _file_part("content", "photo.jpg"),
                                    "style": _file_part("style", "painting.jpg"),
                                    "style_mask": _file_part("style_mask", "mask.png"),
                                },
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "queued; Location is the job's URL",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreatedJob"}}},
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "links": _job_links(),
                        },
                        **_errors(401, 413, 422, 429, 503),
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "The API key's jobs, newest first",
                    "security": [{"apiKey": []}],
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                        },
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "a page of jobs",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["jobs", "total", "limit", "offset"],
                                        "properties": {
                                            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                                            "total": {"type": "integer"},
                                            "limit": {"type": "integer"},
                                            "offset": {"type": "integer"},
                                        },
                                    }
                                }
                            },
                        },
                        **_errors(400, 401, 503),
                    },
                },
            },
            "/api/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's status, progress, snapshots and output",
                    "parameters": [job_id],
                    "responses": {"200": _job_response("the job"), **_errors(404, 503)},
                },
                "delete": {
                    "operationId": "deleteJob",
                    "summary": "Delete a finished job with its images",
                    "security": key_optional,
                    "parameters": [job_id, job_token],
                    "responses": {
                        "204": {"description": "deleted"},
                        **_errors(401, 403, 404, 409, 503, e409="the job is queued or running: cancel it first"),
                    },
                },
            },
            "/api/v1/jobs/{job_id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a job (a running one stops at its next iteration)",
                    "security": key_optional,
                    "parameters": [job_id, job_token],
                    "responses": {
                        "200": _job_response("canceled"),
                        "202": _job_response("cancel requested"),
                        **_errors(401, 403, 404, 409, 503),
                    },
                }
            },
            "/api/v1/jobs/{job_id}/events": {
                "get": {
                    "operationId": "jobEvents",
                    "summary": "Server-sent events `status`, `progress` and `snapshot`, each carrying the Job",
                    "description": "The stream ends after the final status, or after the server's stream limit "
                    "(IMPASTO_EVENT_STREAM_LIMIT, 120 s by default) with a `reconnect` event, also carrying "
                    "the Job: open the stream again.",
                    "parameters": [job_id],
                    "responses": {
                        "200": {
                            "description": "an event stream",
                            "content": {"text/event-stream": {"schema": _event_schema()}},
                        },
                        **_errors(
                            404,
                            503,
                            e503="the database is unreachable, or too many live pages on this server: poll the job",
                        ),
                    },
                }
            },
            "/api/v1/jobs/{job_id}/output.png": {
                "get": {
                    "operationId": "getOutput",
                    "summary": "The output image (`?download=1` to save it)",
                    "parameters": [job_id, {"name": "download", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": _png("the output"), **_REDIRECT, **_errors(404, 503)},
                }
            },
            "/api/v1/jobs/{job_id}/output.{extension}": {
                "get": {
                    "operationId": "getClipOutput",
                    "summary": "A clip job's stylized clip, in the input's container and frame rate, its audio kept",
                    "parameters": [
                        job_id,
                        {
                            "name": "extension",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": ["mp4", "webm", "gif"]},
                        },
                        {"name": "download", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "the clip",
                            "content": {
                                kind: {"schema": {"type": "string", "format": "binary"}}
                                for kind in ("video/mp4", "video/webm", "image/gif")
                            },
                        },
                        **_REDIRECT,
                        **_errors(404, 503),
                    },
                }
            },
            "/api/v1/jobs/{job_id}/frames/{frame}.png": {
                "get": {
                    "operationId": "getFrame",
                    "summary": "A clip's stylized frame (0-based), as soon as it is painted",
                    "parameters": [
                        job_id,
                        {"name": "frame", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
                        {"name": "download", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _png("the frame"), **_REDIRECT, **_errors(404, 503)},
                }
            },
            "/api/v1/jobs/{job_id}/snapshots/{iteration}.png": {
                "get": {
                    "operationId": "getSnapshot",
                    "summary": "A snapshot image",
                    "parameters": [
                        job_id,
                        {
                            "name": "iteration",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {"name": "download", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _png("the snapshot"), **_REDIRECT, **_errors(404, 503)},
                }
            },
            "/api/v1/jobs/{job_id}/inputs/{index}": {
                "get": {
                    "operationId": "getInput",
                    "summary": "An input image: 0 is the content, then the styles, then the style masks",
                    "parameters": [
                        job_id,
                        {"name": "index", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
                    ],
                    "responses": {
                        "200": {
                            "description": "the image as uploaded",
                            "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **_REDIRECT,
                        **_errors(404, 503),
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "the OpenAPI document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Whether the database and the queue are reachable",
                    "responses": {
                        "200": {
                            "description": "healthy",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "503": {
                            "description": "something is unreachable",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Job": _job_schema(),
                "Error": _error_schema(),
                "CreatedJob": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Job"},
                        {
                            "type": "object",
                            "required": ["token"],
                            "properties": {
                                "token": {
                                    "type": "string",
                                    "description": "cancels or deletes the job (header X-Job-Token); "
                                    "only its hash is kept, so it is shown this once",
                                }
                            },
                        },
                    ]
                },
            },
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "a key from `impasto keys create`"}
            },
        },
    }
    encoding = {"content": _file_part("content", "photo.jpg"), "style": _file_part("style", "painting.jpg")}
    document["paths"].update(sweep_paths(sweep_form(form, settings), encoding, _errors, key_optional, _png))
    document["components"]["schemas"].update(sweep_schemas())
    return document
