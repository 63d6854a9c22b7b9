"""Where the views find the services (as flaskr's ``db.get_db()``): the app factory puts a
:class:`WebServices` in ``app.extensions["abkit"]``; blueprints call :func:`services`, so none of
them imports the factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from flask import current_app

from abkit.config import Settings
from abkit.runtime import Runtime
from abkit.web.auth import Access

EXTENSION = "abkit"


@dataclass(frozen=True, slots=True)
class WebServices:
    """What the views use: settings, the runtime's services and access control."""

    settings: Settings
    runtime: Runtime
    access: Access


def services() -> WebServices:
    return cast(WebServices, current_app.extensions[EXTENSION])
