"""Admin actions: pause, resume, promote, rollback -- POST only, token-checked, audited.

Two doors to the same four actions:

* the results page's forms, ``POST /experiments/<key>/<action>``: a CSRF token, the admin
  token typed into the form, the person's name; answered with a redirect back to the page;
* scripts, ``POST /api/experiments/<key>/<action>`` with ``Authorization: Bearer
  <ABKIT_ADMIN_TOKEN>`` and a JSON or form body (``actor``, ``reason``, ``arm``); answered with
  JSON. No CSRF token: a browser never sends that header on its own.

Every check runs before anything changes. The action itself goes through the same services as
the CLI (``ExperimentService.pause/start``, ``DecisionService.promote/rollback``), which write
the audit trail with the actor -- recorded as ``"<name> (web)"`` -- and, for promote and
rollback, the reason.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, jsonify, redirect, request, url_for
from werkzeug.wrappers import Response

from abkit.errors import ValidationError
from abkit.web import auth
from abkit.web.context import services

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__)

ACTIONS = ("pause", "resume", "promote", "rollback")
MAX_ACTOR_LENGTH = 100
MAX_REASON_LENGTH = 500


def _text(values: Mapping[str, Any], name: str, limit: int, *, required: bool) -> str:
    raw = values.get(name, "")
    value = raw.strip() if isinstance(raw, str) else ""
    if required and not value:
        raise ValidationError(name, "is required: who is doing this (recorded in the audit trail)")
    if len(value) > limit:
        raise ValidationError(name, f"at most {limit} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise ValidationError(name, "must not contain control characters")
    return value


def perform(key: str, action: str, values: Mapping[str, Any]) -> str:
    """Check the inputs, then act; returns what happened in one sentence."""
    if action not in ACTIONS:
        raise ValidationError("action", f"must be one of {', '.join(ACTIONS)}")
    name = _text(values, "actor", MAX_ACTOR_LENGTH, required=True)
    reason = _text(values, "reason", MAX_REASON_LENGTH, required=False)
    actor = f"{name} (web)"
    runtime = services().runtime
    log.info(
        "admin action %s on %s by %r from %s: %s", action, key, actor, request.remote_addr, reason
    )
    if action == "pause":
        record = runtime.experiments.pause(key, actor=actor)
        return f"{key} is {record.experiment.status}"
    if action == "resume":
        record = runtime.experiments.start(key, actor=actor)
        return f"{key} is {record.experiment.status}"
    if action == "promote":
        arm = _text(values, "arm", 64, required=False)
        if not arm:
            raise ValidationError("arm", "is required: the arm to promote")
        decision = runtime.decisions.promote(key, arm, actor=actor, reason=reason)
        return f"{key}: promoted {decision.arm_key}"
    decision = runtime.decisions.rollback(key, actor=actor, reason=reason)
    return f"{key}: rolled back to {decision.arm_key}"


@bp.post("/experiments/<key>/<action>")
def page_action(key: str, action: str) -> Response:
    """The results page's admin forms."""
    access = services().access
    token = auth.bearer(request)
    if token is None:
        auth.check_csrf(access)
        token = request.form.get("admin_token", "")
    access.check_admin(token)
    perform(key, action, request.form)
    return redirect(url_for("pages.experiment", key=key, done=action), code=303)


@bp.post("/api/experiments/<key>/<action>")
def api_action(key: str, action: str) -> Response:
    """For scripts: bearer admin token, JSON (or form) body."""
    services().access.check_admin(auth.bearer(request) or "")
    body = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(body, Mapping):
        raise ValidationError("body", "must be a JSON object with actor (and reason, arm)")
    message = perform(key, action, body)
    return jsonify(ok=True, action=action, experiment=key, message=message)
