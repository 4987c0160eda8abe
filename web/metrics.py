"""GET /metrics: the service's figures for Prometheus (see docs/monitoring.md).

Not part of the JSON API: it answers Prometheus's text format, and a database or broker
outage is a one-line 503 that Prometheus records as a failed scrape.
"""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Response, current_app
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared.db import database_unreachable, describe_db_error
from shared.metrics import CONTENT_TYPE, MetricsUnavailable, render

from .services import services

log = logging.getLogger("impasto.web")

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    try:
        with services().sessions() as session:
            body = render(session, _redis(), services().settings)
    except MetricsUnavailable as err:
        return _unavailable(f"the broker (Redis) cannot be reached: {err}")
    except (DBAPIError, PoolTimeout) as err:
        if not database_unreachable(err):
            raise
        return _unavailable(f"the database cannot be reached: {describe_db_error(err)}")
    return Response(body, content_type=CONTENT_TYPE)


def _unavailable(reason: str) -> Response:
    log.warning("event=metrics-unavailable error=%r", reason)
    return Response(f"metrics unavailable: {reason}\n", status=503, content_type="text/plain; charset=utf-8")


def _redis() -> redis.Redis:
    """One client per app, on the broker's Redis, where the workers record their figures."""
    client = current_app.extensions.get("impasto.metrics")
    if client is None:
        client = redis.Redis.from_url(services().settings.require_broker(), socket_timeout=5, socket_connect_timeout=2)
        client = current_app.extensions.setdefault("impasto.metrics", client)
    return client
