"""The sweeps' part of the OpenAPI document: their paths and the `Sweep` schemas."""

from __future__ import annotations

from typing import Any

from shared.models import STATUSES
from shared.settings import Settings


def sweep_form(job_form: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A job's form plus `axes`."""
    axes = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 2,
            "additionalProperties": {"type": "array", "minItems": 2},
        },
        "description": "a JSON object of one or two job parameters, each with the list of values to compare, "
        'written as that field takes them: {"style_weight": [0.3, 1, 3], "content_layers": ["relu2_2", '
        f'"relu4_2"]}}. At most {settings.max_sweep_cells} cells (the product of the lengths); the photo '
        "and styles cannot be an axis",
        "example": '{"style_weight": [0.3, 1, 3]}',
    }
    return {
        **job_form,
        "required": [*job_form["required"], "axes"],
        "properties": {**job_form["properties"], "axes": axes},
    }


def _cell_schema() -> dict[str, Any]:
    url = {"type": "string"}
    nullable_url = {"type": ["string", "null"]}
    return {
        "type": "object",
        "required": ["job_id", "values", "status", "progress", "snapshot_url"],
        "properties": {
            "job_id": {"type": ["string", "null"], "description": "null once the cell's job was deleted"},
            "values": {"type": "array", "items": {"type": "string"}, "description": "one per axis"},
            "status": {"type": "string", "enum": [*STATUSES, "deleted"]},
            "progress": {
                "type": "object",
                "required": ["iteration", "iterations", "fraction"],
                "properties": {
                    "iteration": {"type": "integer"},
                    "iterations": {"type": "integer"},
                    "fraction": {"type": "number"},
                },
            },
            "output_url": nullable_url,
            "snapshot_url": {**nullable_url, "description": "the cell's latest snapshot"},
            "url": {**url, "description": "the cell's job page"},
            "job_url": {**url, "description": "the cell's job in the API"},
        },
    }


def sweep_schemas() -> dict[str, Any]:
    sweep = {
        "type": "object",
        "required": ["id", "status", "axes", "cells", "sheet_url", "url", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "status": {
                "type": "string",
                "enum": STATUSES,
                "description": "queued until a cell starts, running until all have ended; then succeeded "
                "when every cell did, failed when any failed, otherwise canceled",
            },
            "axes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "values"],
                    "properties": {
                        "name": {"type": "string"},
                        "values": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "cells": {
                "type": "array",
                "items": _cell_schema(),
                "description": "row-major: the last axis varies fastest",
            },
            "sheet_url": {"type": "string", "description": "the contact sheet (PNG)"},
            "url": {"type": "string", "description": "the sweep's page"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    }
    created = {
        "allOf": [
            {"$ref": "#/components/schemas/Sweep"},
            {
                "type": "object",
                "required": ["token"],
                "properties": {
                    "token": {
                        "type": "string",
                        "description": "cancels the sweep, and cancels or deletes each of its cells' jobs "
                        "(header X-Job-Token); shown this once",
                    }
                },
            },
        ]
    }
    return {"Sweep": sweep, "CreatedSweep": created}


def sweep_paths(form: dict[str, Any], encoding: dict[str, Any], errors, key_optional, png) -> dict[str, Any]:
    """The /api/v1/sweeps paths; `errors` and `png` are the document's own response builders."""
    sweep_id = {"name": "sweep_id", "in": "path", "required": True, "schema": {"type": "string"}}
    token = {
        "name": "X-Job-Token",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "the `token` of the answer to the sweep's submission",
    }
    sweep = {"application/json": {"schema": {"$ref": "#/components/schemas/Sweep"}}}
    links = {
        "getSweep": {"operationId": "getSweep", "parameters": {"sweep_id": "$response.body#/id"}},
        "cancelSweep": {
            "operationId": "cancelSweep",
            "parameters": {"sweep_id": "$response.body#/id", "header.X-Job-Token": "$response.body#/token"},
        },
        "sweepSheet": {"operationId": "sweepSheet", "parameters": {"sweep_id": "$response.body#/id"}},
    }
    return {
        "/api/v1/sweeps": {
            "post": {
                "operationId": "createSweep",
                "summary": "Submit a sweep: one job per combination of the axes' values",
                "description": "Every field a job takes, plus `axes`. Each cell is a job, counted against "
                "the quota as one. The answer's `token` (given this once) cancels the sweep.",
                "security": key_optional,
                "requestBody": {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": form, "encoding": encoding}},
                },
                "responses": {
                    "202": {
                        "description": "queued; Location is the sweep's URL",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreatedSweep"}}},
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "links": links,
                    },
                    **errors(401, 413, 422, 429, 503, e422="a field or an axis is invalid; `field` names it"),
                },
            }
        },
        "/api/v1/sweeps/{sweep_id}": {
            "get": {
                "operationId": "getSweep",
                "summary": "A sweep's status and each cell's status, progress and pictures",
                "parameters": [sweep_id],
                "responses": {"200": {"description": "the sweep", "content": sweep}, **errors(404, 503)},
            }
        },
        "/api/v1/sweeps/{sweep_id}/cancel": {
            "post": {
                "operationId": "cancelSweep",
                "summary": "Cancel every cell not yet ended",
                "security": key_optional,
                "parameters": [sweep_id, token],
                "responses": {
                    "200": {"description": "every cell has ended", "content": sweep},
                    "202": {"description": "running cells stop at their next iteration", "content": sweep},
                    **errors(401, 403, 404, 503),
                },
            }
        },
        "/api/v1/sweeps/{sweep_id}/sheet.png": {
            "get": {
                "operationId": "sweepSheet",
                "summary": "The contact sheet: each cell's output (or latest snapshot) on the grid, labelled",
                "parameters": [
                    sweep_id,
                    {"name": "download", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {"200": png("the contact sheet"), **errors(404, 503)},
            }
        },
        "/api/v1/sweeps/{sweep_id}/events": {
            "get": {
                "operationId": "sweepEvents",
                "summary": "Server-sent events: `sweep` (the Sweep JSON) whenever a cell changes; `reconnect`",
                "parameters": [sweep_id],
                "responses": {
                    "200": {
                        "description": "an event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **errors(404, 503),
                },
            }
        },
    }
