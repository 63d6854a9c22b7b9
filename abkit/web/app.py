"""The Flask application factory: ``create_app(settings, runtime=None, test_config=None)``.

The services the views need live in ``app.extensions["abkit"]`` (a
:class:`~abkit.web.context.WebServices`); views reach them through
:func:`abkit.web.context.services` and never touch SQL. Errors from the
:mod:`abkit.errors` tree are translated once, here: 400/401/403/404/409/503 as JSON under
``/api/`` and as a page elsewhere (always escaped). For production::

    gunicorn -w 4 -b 0.0.0.0:8000 'abkit.web:create_app()'

which reads ``ABKIT_*`` settings from the environment (``Settings.from_env()`` at the edge).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from abkit.config import Settings
from abkit.errors import (
    AbkitError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailableError,
    ValidationError,
)
from abkit.report import wording
from abkit.runtime import Runtime
from abkit.web import admin, api, auth, pages
from abkit.web.context import EXTENSION, WebServices, services

log = logging.getLogger(__name__)

HTTP_STATUS: tuple[tuple[type[AbkitError], int], ...] = (
    (ValidationError, 400),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (StoreUnavailableError, 503),
)
# No script at all, styles only from this server, forms only to this server, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def create_app(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    test_config: Mapping[str, Any] | None = None,
) -> Flask:
    """Build the results app. Without ``settings``, they are read from the environment; without
    a ``runtime``, one is built on ``settings.database_url`` (its store only: the web app needs
    no writers or background threads)."""
    settings = settings if settings is not None else Settings.from_env()
    runtime = runtime if runtime is not None else Runtime.from_settings(settings)
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024)
    if test_config:
        app.config.update(test_config)
    app.jinja_env.autoescape = True  # every template, whatever its file name
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
    access = auth.Access(settings.web_token, settings.admin_token, runtime.clock)
    app.extensions[EXTENSION] = WebServices(settings=settings, runtime=runtime, access=access)
    app.jinja_env.filters.update(
        effect=wording.effect,
        interval=wording.interval,
        mean=wording.mean,
        p_value=wording.p_value,
        count=wording.count,
        share=wording.share,
        duration=wording.duration,
        when=wording.when,
    )
    app.jinja_env.globals.update(
        csrf_token=lambda: access.csrf_token(auth.browser_id()),
        csrf_field=auth.CSRF_FIELD,
        access=access,
        wording=wording,
    )

    app.register_blueprint(pages.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.health)
    app.before_request(_require_reader)
    app.after_request(_headers)
    app.register_error_handler(AbkitError, _abkit_error)
    app.register_error_handler(HTTPException, _http_error)
    return app


PUBLIC_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "pages.login", "static"})


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _require_reader() -> BaseResponse | None:
    access = services().access
    if request.endpoint in PUBLIC_ENDPOINTS or access.can_read(request):
        return None
    if _wants_json() or auth.bearer(request) is not None:
        response = jsonify(error="a token is required: Authorization: Bearer <ABKIT_WEB_TOKEN>")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="abkit"'
        return response
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("pages.login", next=target), code=303)


def _headers(response: BaseResponse) -> BaseResponse:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "static":
        response.headers.setdefault("Cache-Control", "no-store")
    return auth.set_cookies(response)


def _error(status: int, message: str, field: str | None = None) -> tuple[Response | str, int]:
    if _wants_json():
        body: dict[str, Any] = {"error": message}
        if field:
            body["field"] = field
        return jsonify(body), status
    return render_template("error.html", status=status, message=message), status


def _abkit_error(exc: AbkitError) -> tuple[Response | str, int]:
    status = next((code for kind, code in HTTP_STATUS if isinstance(exc, kind)), 500)
    if status == 503:
        log.warning("store unavailable: %s", exc)
    field = exc.field if isinstance(exc, ValidationError) else None
    return _error(status, str(exc), field)


def _http_error(exc: HTTPException) -> tuple[Response | str, int]:
    return _error(exc.code or 500, exc.description or exc.name)
