"""The pieces the OpenAPI document is built from: the form's fields (from StyleParams, with this
service's limits), the component schemas, and the response and part builders."""

from __future__ import annotations

from typing import Any

from shared.params import WEIGHT_CHOICES, StyleParams
from shared.settings import Settings

STATUSES = ["queued", "running", "succeeded", "failed", "canceled"]
EVENTS = ["status", "progress", "snapshot", "reconnect"]
# The formats an upload is known by; the file's own bytes decide, not the part's Content-Type.
IMAGE_TYPES = "image/png, image/jpeg, image/webp, image/gif, image/bmp, image/tiff"
# A file in a multipart body, as OpenAPI 3.1 spells it (3.0's `format: binary`).
FILE = {"type": "string", "contentMediaType": "application/octet-stream"}


def param_schemas(settings: Settings) -> dict[str, Any]:
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


def job_schema() -> dict[str, Any]:
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


def error_schema() -> dict[str, Any]:
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


def event_schema() -> dict[str, Any]:
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


def errors(*statuses: int, **descriptions: str) -> dict[str, Any]:
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


def job_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
    }


def file_part(field: str, filename: str) -> dict[str, Any]:
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


def job_links() -> dict[str, Any]:
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


def png(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


# With S3 storage and IMPASTO_S3_DOWNLOADS=redirect, images are a redirect to the S3 server.
REDIRECT = {
    "302": {
        "description": "the image is on the S3 server: Location is a presigned URL that "
        "expires (IMPASTO_S3_URL_EXPIRY); fetch it at once, do not keep it",
        "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
    }
}
