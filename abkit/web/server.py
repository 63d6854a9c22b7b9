"""Serving the app: a thread next to gRPC (``abkit serve``, tests) or gunicorn (``abkit web``).

* :class:`WebServer` -- werkzeug's threaded WSGI server on a background thread, bound at
  construction (port 0 picks a free port), stopped with :meth:`WebServer.stop`. Used inside
  ``abkit serve`` (one process for everything on the embedded store), by ``abkit web --dev``
  and by the browser test.
* :func:`run_gunicorn` -- the production server: ``abkit web`` runs gunicorn with worker
  processes, each building its own app (and database pool) after the fork. The same app is
  ``gunicorn 'abkit.web:create_app()'`` for those who drive gunicorn themselves.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from abkit.errors import ValidationError

log = logging.getLogger(__name__)


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:8000"`` for IPv6) -> ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValidationError(
            "ABKIT_WEB_ADDRESS", f"must be host:port such as 127.0.0.1:8000, got {address!r}"
        )
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 -- ":8000" means every interface


class WebServer:
    """The app on werkzeug's threaded server in a daemon thread."""

    def __init__(self, app: Flask, address: str) -> None:
        host, port = parse_address(address)
        # Bind here (werkzeug would print and sys.exit on a busy port): OSError, as usual.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            # werkzeug duplicates the descriptor; ours is closed when the block ends.
            self._server: BaseWSGIServer = make_server(
                host, port, app, threaded=True, fd=sock.fileno()
            )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when the address asked for port 0)."""
        return int(self._server.port)

    @property
    def url(self) -> str:
        host = str(self._server.host)
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="abkit-web", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting requests and wait for the serving loop to end."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()


def run_gunicorn(app_factory: Callable[[], Flask], address: str, workers: int | None) -> None:
    """Run gunicorn in the foreground (it handles SIGTERM/SIGINT gracefully)."""
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):  # type: ignore[misc]  # gunicorn ships no types
        def load_config(self) -> None:
            options: dict[str, Any] = {"bind": address, "accesslog": "-"}
            if workers is not None:
                options["workers"] = workers
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Flask:
            return app_factory()

    log.info("gunicorn on %s with %s workers", address, workers or "the default number of")
    Application().run()
