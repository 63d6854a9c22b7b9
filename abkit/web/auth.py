"""Who may read the pages and who may act: bearer tokens, a login cookie, CSRF protection.

* **Reading** is open unless ``ABKIT_WEB_TOKEN`` is set. Then a request needs
  ``Authorization: Bearer <token>`` (the web or the admin token) or the session cookie that
  ``/login`` sets after the token is typed once. Pages without it redirect to ``/login``; the
  API answers 401 with ``WWW-Authenticate: Bearer``. ``/healthz`` and ``/readyz`` stay open.
* **Acting** (pause, resume, promote, rollback) needs ``ABKIT_ADMIN_TOKEN``: typed into the
  page's form, or sent as a bearer token by a script. No admin token configured means no admin
  actions at all. Missing token: 401; wrong token (or the read-only token): 403.
* **CSRF.** Every form carries a signed token bound to a random per-browser cookie (the signed
  double-submit pattern, OWASP CSRF cheat sheet): ``expiry.HMAC(key, "csrf", cookie, expiry)``.
  Another site can neither read the cookie nor sign a token for it, and the cookie is
  ``SameSite=Strict``. Requests authenticated by an ``Authorization`` header need no CSRF token:
  browsers never attach that header on their own.

Nothing is kept on the server: the session cookie is ``expiry.HMAC(key, "session", expiry)``
and the HMAC key is derived from the configured tokens, so every process (gunicorn workers
included) agrees without a shared secret, and rotating a token signs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final
from urllib.parse import urlsplit

from flask import Request, g, request
from werkzeug.wrappers import Response

from abkit.errors import AuthenticationError, PermissionDeniedError, ValidationError
from abkit.ports import Clock

SESSION_COOKIE: Final = "abkit_session"
CSRF_COOKIE: Final = "abkit_csrf"
CSRF_FIELD: Final = "csrf_token"
SESSION_SECONDS: Final = 12 * 3600
CSRF_SECONDS: Final = 12 * 3600
MAX_TOKEN_LENGTH: Final = 1024


def _equal(given: str, expected: str) -> bool:
    """Constant-time comparison (never short-circuits on the first differing character)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer(req: Request) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if there is one."""
    header = req.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()[:MAX_TOKEN_LENGTH]


class Access:
    """Token checks and signed values for one app (see the module docstring)."""

    def __init__(self, web_token: str, admin_token: str, clock: Clock) -> None:
        self.web_token = web_token
        self.admin_token = admin_token
        self._clock = clock
        material = f"abkit-web\0{web_token}\0{admin_token}".encode()
        self._key = hashlib.sha256(material).digest()

    @property
    def protected(self) -> bool:
        """Reading needs a token."""
        return bool(self.web_token)

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_token)

    # -- signed values ---------------------------------------------------------------------------

    def _sign(self, *parts: str) -> str:
        return hmac.new(self._key, "\0".join(parts).encode(), hashlib.sha256).hexdigest()

    def _stamp(self, purpose: str, subject: str, seconds: int) -> str:
        expires = str(int(self._clock.now().timestamp()) + seconds)
        return f"{expires}.{self._sign(purpose, subject, expires)}"

    def _valid(self, value: str, purpose: str, subject: str) -> bool:
        expires, _, signature = value.partition(".")
        if not expires.isdigit() or int(expires) < self._clock.now().timestamp():
            return False
        return _equal(signature, self._sign(purpose, subject, expires))

    def session_value(self) -> str:
        return self._stamp("session", "", SESSION_SECONDS)

    def csrf_token(self, browser: str) -> str:
        return self._stamp("csrf", browser, CSRF_SECONDS)

    def csrf_valid(self, token: str, browser: str) -> bool:
        return bool(browser) and self._valid(token, "csrf", browser)

    # -- checks ----------------------------------------------------------------------------------

    def reader_token(self, token: str) -> bool:
        """The read-only token, or the admin token (which may read as well)."""
        return (bool(self.web_token) and _equal(token, self.web_token)) or (
            self.admin_enabled and _equal(token, self.admin_token)
        )

    def can_read(self, req: Request) -> bool:
        if not self.protected:
            return True
        token = bearer(req)
        if token is not None:
            return self.reader_token(token)
        return self._valid(req.cookies.get(SESSION_COOKIE, ""), "session", "")

    def check_admin(self, token: str) -> None:
        """Raise unless ``token`` is the admin token (401 missing, 403 wrong or disabled)."""
        if not self.admin_enabled:
            raise PermissionDeniedError(
                "admin actions are disabled on this server: set ABKIT_ADMIN_TOKEN to enable them"
            )
        if not token:
            raise AuthenticationError("the admin token is required for this action")
        if not _equal(token[:MAX_TOKEN_LENGTH], self.admin_token):
            raise PermissionDeniedError("wrong admin token: nothing was changed")


# -- the per-browser CSRF cookie -----------------------------------------------------------------


def browser_id() -> str:
    """This browser's CSRF cookie value, minting one (set by :func:`set_cookies`) if absent."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if len(current) == 64 and all(ch in "0123456789abcdef" for ch in current):
        return current
    minted: str | None = g.get("abkit_new_browser")
    if minted is None:
        minted = secrets.token_hex(32)
        g.abkit_new_browser = minted
    return minted


def check_csrf(access: Access) -> None:
    """400 unless the form's CSRF token was signed for this browser's cookie."""
    token = request.form.get(CSRF_FIELD, "")
    if not access.csrf_valid(token, request.cookies.get(CSRF_COOKIE, "")):
        raise ValidationError(
            CSRF_FIELD,
            "the form has expired or did not come from this site; reload the page and try again",
        )


def set_cookies(response: Response) -> Response:
    """Send a freshly minted CSRF cookie (after_request)."""
    minted: str | None = g.get("abkit_new_browser")
    if minted is not None:
        response.set_cookie(
            CSRF_COOKIE,
            minted,
            max_age=CSRF_SECONDS,
            httponly=True,
            secure=request.is_secure,
            samesite="Strict",
        )
    return response


def set_session(response: Response, access: Access) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        access.session_value(),
        max_age=SESSION_SECONDS,
        httponly=True,
        secure=request.is_secure,
        samesite="Lax",
    )


def safe_next(target: str | None, default: str) -> str:
    """Only a path on this site (never ``//evil.example`` or ``https://...``): no open redirect."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ord(ch) < 32 for ch in target):
        return default
    return target
