"""The Flask app factory: the one way the web tier is built."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from flask import Flask, Response, request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge, ServiceUnavailable

from shared.db import database_unreachable, describe_db_error
from shared.settings import Settings, load_settings
from shared.storage import S3Storage, StorageError

from .forms import FormRequest
from .presets import PRESETS
from .services import Services, init_services

log = logging.getLogger("impasto.web")

# The pages load scripts, styles and images from this site only (and images from the S3
# server when they are redirected there), and no inline code.
IMG_SRC = "img-src 'self' data: blob:"
CONTENT_SECURITY_POLICY = (
    f"default-src 'self'; {IMG_SRC}; script-src 'self'; "
    "style-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
# Seconds a client is told to wait (Retry-After) by a 503 that names no time of its own: a
# database outage of a few seconds is over by then, and clients do not hammer it meanwhile.
RETRY_AFTER_S = 5


def create_app(
    settings: Settings | None = None, config: dict[str, Any] | None = None, services: Services | None = None
) -> Flask:
    """Build the app from settings (default: the environment); tests pass their own."""
    settings = settings or (services.settings if services else load_settings())
    app = Flask(__name__)
    app.request_class = FormRequest  # an unreadable form is said to be one, not taken as empty
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        # Uploads are read into memory part by part; the total is capped by MAX_CONTENT_LENGTH.
        MAX_FORM_MEMORY_SIZE=settings.max_upload_bytes,
    )
    # Signs cookies and CSRF tokens. An app built without one (tests, one process) makes its
    # own; `impasto web`, with several processes, refuses to start without IMPASTO_SECRET_KEY.
    if settings.secret_key is None:
        log.warning("event=secret-key-generated reason=IMPASTO_SECRET_KEY-unset scope=this-process")
    app.config["IMPASTO_SECRET_KEY"] = settings.secret_key or secrets.token_urlsafe(32)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the documented field order
    app.config.update(config or {})
    services = services or Services.from_settings(settings)
    init_services(app, services)

    from . import api, images, metrics, pages, sweeps

    csp = _content_security_policy(images.redirect_storage(services), services.settings.s3_public_endpoint_url)

    app.register_blueprint(api.bp)
    app.register_blueprint(sweeps.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(metrics.bp)

    def wants_json() -> bool:
        return (
            request.path.startswith("/api/")
            or request.path == "/healthz"
            or request.accept_mimetypes.best == "application/json"
        )

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        if isinstance(err.response, Response):  # a view built its own answer
            return err.response
        # Keep the headers an error carries (Allow for a 405, ...), not its HTML body.
        headers = {k: v for k, v in err.get_headers() if k.lower() != "content-type"}
        if isinstance(err, RequestEntityTooLarge):  # werkzeug says neither which limit nor how much
            err.description = (
                f"the request is too large: this service takes at most "
                f"{settings.max_upload_bytes / 2**20:.0f} MB in all, in at most "
                f"{app.config['MAX_FORM_PARTS']} form fields; send smaller images"
            )
        if wants_json():
            return api.error_response(err.code or 500, _code(err.code), err.description or err.name, headers=headers)
        body, status = pages.error_page(err)
        return body, status, headers

    def unavailable(what: str, error: str, wait: str):
        """503 for an outage of something the service depends on: not a bug, so one log line
        per request (a traceback each would bury the log) and an answer that says to wait."""
        log.warning("event=%s-unavailable path=%s error=%s", what.rsplit(" ", 1)[-1], request.path, error)
        message = f"the {what} cannot be reached right now; try again in {wait}"
        if wants_json():
            return api.error_response(503, "unavailable", message)
        return pages.error_page(ServiceUnavailable(message[0].upper() + message[1:] + "."))

    @app.errorhandler(DBAPIError)
    @app.errorhandler(PoolTimeout)
    def database_error(err: Exception):
        if not database_unreachable(err):
            return unexpected(err)
        return unavailable("database", describe_db_error(err), "a few seconds")

    @app.errorhandler(StorageError)
    def storage_error(err: StorageError):  # the image store (S3) is down or refuses us
        return unavailable("image storage", repr(str(err)), "a minute")

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        log.exception("event=unhandled-error path=%s", request.path)
        if wants_json():
            return api.error_response(500, "internal_error", "something went wrong on our side; try again")
        return pages.error_page(InternalServerError("Something went wrong on our side; try again."))

    @app.context_processor
    def credits() -> dict[str, Any]:
        return {"presets": PRESETS}  # every page's footer credits the built-in paintings

    @app.after_request
    def headers(response):
        response.headers.setdefault("Content-Security-Policy", csp)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.status_code == 503:  # every 503 says when to come back
            response.headers.setdefault("Retry-After", str(RETRY_AFTER_S))
        return response

    return app


def _content_security_policy(redirected_to: S3Storage | None, public_endpoint_url: str | None) -> str:
    """The policy, with the S3 server that images are redirected to among the image sources,
    so that the job page's pictures still load."""
    if redirected_to is None:
        return CONTENT_SECURITY_POLICY
    origin = redirected_to.download_origin(public_endpoint_url)
    return CONTENT_SECURITY_POLICY.replace(IMG_SRC, f"{IMG_SRC} {origin}")


def _code(status: int | None) -> str:
    return {
        400: "bad_request",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "too_large",
        415: "unsupported_media_type",
        422: "invalid_parameter",
        503: "unavailable",
    }.get(status or 500, "error")
