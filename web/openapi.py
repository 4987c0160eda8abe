"""The OpenAPI 3.1 document of the JSON API, its parameters derived from StyleParams."""

from __future__ import annotations

from functools import cache
from typing import Any

from shared.settings import Settings

from .openapi_parts import (
    FILE,
    REDIRECT,
    error_schema,
    errors,
    event_schema,
    file_part,
    job_links,
    job_response,
    job_schema,
    param_schemas,
    png,
)
from .openapi_sweeps import sweep_form, sweep_paths, sweep_schemas
from .presets import PRESETS


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
            **param_schemas(settings),
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
            **_jobs_path(form, key_optional),
            **_job_paths(job_id, job_token, key_optional),
            **_image_paths(job_id),
            **_service_paths(),
        },
        "components": {
            "schemas": {
                "Job": job_schema(),
                "Error": error_schema(),
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
    encoding = {"content": file_part("content", "photo.jpg"), "style": file_part("style", "painting.jpg")}
    document["paths"].update(sweep_paths(sweep_form(form, settings), encoding, errors, key_optional, png))
    document["components"]["schemas"].update(sweep_schemas())
    return document


def _jobs_path(form: dict[str, Any], key_optional: list[dict[str, Any]]) -> dict[str, Any]:
    """/api/v1/jobs: submit a job, list a key's jobs."""
    return {
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
                                "content": file_part("content", "photo.jpg"),
                                "style": file_part("style", "painting.jpg"),
                                "style_mask": file_part("style_mask", "mask.png"),
                            },
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "queued; Location is the job's URL",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreatedJob"}}},
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "links": job_links(),
                    },
                    **errors(401, 413, 422, 429, 503),
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
                    **errors(400, 401, 503),
                },
            },
        },
    }


def _job_paths(job_id: dict[str, Any], job_token: dict[str, Any], key_optional: list[dict[str, Any]]) -> dict[str, Any]:
    """One job: show, delete, cancel, its events."""
    return {
        "/api/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "A job's status, progress, snapshots and output",
                "parameters": [job_id],
                "responses": {"200": job_response("the job"), **errors(404, 503)},
            },
            "delete": {
                "operationId": "deleteJob",
                "summary": "Delete a finished job with its images",
                "security": key_optional,
                "parameters": [job_id, job_token],
                "responses": {
                    "204": {"description": "deleted"},
                    **errors(401, 403, 404, 409, 503, e409="the job is queued or running: cancel it first"),
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
                    "200": job_response("canceled"),
                    "202": job_response("cancel requested"),
                    **errors(401, 403, 404, 409, 503),
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
                        "content": {"text/event-stream": {"schema": event_schema()}},
                    },
                    **errors(
                        404,
                        503,
                        e503="the database is unreachable, or too many live pages on this server: poll the job",
                    ),
                },
            }
        },
    }


def _image_paths(job_id: dict[str, Any]) -> dict[str, Any]:
    """A job's pictures: output (image or clip), frames, snapshots, inputs."""
    return {
        "/api/v1/jobs/{job_id}/output.png": {
            "get": {
                "operationId": "getOutput",
                "summary": "The output image (`?download=1` to save it)",
                "parameters": [job_id, {"name": "download", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": png("the output"), **REDIRECT, **errors(404, 503)},
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
                    **REDIRECT,
                    **errors(404, 503),
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
                "responses": {"200": png("the frame"), **REDIRECT, **errors(404, 503)},
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
                "responses": {"200": png("the snapshot"), **REDIRECT, **errors(404, 503)},
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
                    **REDIRECT,
                    **errors(404, 503),
                },
            }
        },
    }


def _service_paths() -> dict[str, Any]:
    """This document and the health check."""
    return {
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
    }
