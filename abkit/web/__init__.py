"""The results page and analyst API: a Flask adapter over :mod:`abkit.services.results`.

``create_app(settings, runtime=None, test_config=None)`` builds the app (see
:mod:`abkit.web.app`); ``gunicorn 'abkit.web:create_app()'`` serves it with settings from the
environment.
"""

from abkit.web.app import create_app

__all__ = ["create_app"]
