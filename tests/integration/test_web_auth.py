"""Who may read and who may act: tokens, login, CSRF, and admin actions that change nothing
unless every check passes (real stores: memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from abkit.config import Settings
from abkit.ports import Store
from abkit.runtime import Runtime
from abkit.web import create_app
from abkit.web.auth import CSRF_COOKIE, SESSION_COOKIE
from tests.helpers import T0, Clock, setup, traffic

KEY = "ranker-v2"
ADMIN = "admin-s3cret"
READER = "reader-t0ken"


def client_for(store: Store, clock: Clock, **settings: Any) -> FlaskClient:
    config = Settings(database_url="sqlite://", actor="tester", **settings)
    return create_app(config, Runtime(config, store, clock), {"TESTING": True}).test_client()


@pytest.fixture
def running(store: Store) -> Clock:
    clock = Clock(T0 + timedelta(hours=1))
    setup(store, clock)
    traffic(store, units=200, lift=0.0)
    return clock


def state(store: Store) -> tuple[str, int, int, str | None]:
    """Everything an admin action could change: status, revision, audit length, live version."""
    with store.transaction() as tx:
        record = tx.experiments.get(KEY)
        live = tx.models.live("ranker")
        return (
            record.experiment.status.value,
            record.revision,
            len(tx.decisions.list(KEY)),
            live.version if live else None,
        )


def csrf_from(client: FlaskClient, path: str = f"/experiments/{KEY}") -> str:
    page = client.get(path)
    assert page.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match is not None, "the page has no form with a CSRF token"
    return match.group(1)


def form(csrf: str, **fields: str) -> dict[str, str]:
    return {"csrf_token": csrf, "actor": "Ada Lovelace", "reason": "checked by hand", **fields}


def test_without_an_admin_token_configured_there_are_no_admin_actions(
    store: Store, running: Clock
) -> None:
    client = client_for(store, running)
    assert "Admin actions" not in client.get(f"/experiments/{KEY}").text
    before = state(store)
    response = client.post(f"/experiments/{KEY}/pause", data={"admin_token": "anything"})
    assert response.status_code in (400, 403)  # no form token was ever issued, nor an admin one
    api = client.post(
        f"/api/experiments/{KEY}/pause",
        json={"actor": "ci"},
        headers={"Authorization": "Bearer anything"},
    )
    assert api.status_code == 403 and "disabled" in api.get_json()["error"]
    assert state(store) == before


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({}, 401),  # no admin token
        ({"admin_token": ""}, 401),
        ({"admin_token": "wrong"}, 403),
        ({"admin_token": READER}, 403),  # the read-only token cannot act
        ({"admin_token": ADMIN + " "}, 403),
    ],
)
def test_admin_forms_refuse_missing_or_wrong_tokens(
    store: Store, running: Clock, fields: dict[str, str], status: int
) -> None:
    client = client_for(store, running, admin_token=ADMIN, web_token=READER)
    client.get("/login")
    login = client.post("/login", data={"csrf_token": csrf_from(client, "/login"), "token": READER})
    assert login.status_code == 303
    csrf = csrf_from(client)
    before = state(store)
    for action in ("pause", "promote", "rollback"):
        response = client.post(
            f"/experiments/{KEY}/{action}", data=form(csrf, arm="candidate", **fields)
        )
        assert response.status_code == status, action
    assert state(store) == before


def test_admin_forms_need_a_csrf_token_signed_for_this_browser(
    store: Store, running: Clock
) -> None:
    client = client_for(store, running, admin_token=ADMIN)
    csrf = csrf_from(client)
    before = state(store)
    assert (
        client.post(f"/experiments/{KEY}/pause", data=form("", admin_token=ADMIN)).status_code
        == 400
    )
    forged = csrf.split(".")[0] + "." + "0" * 64
    response = client.post(f"/experiments/{KEY}/pause", data=form(forged, admin_token=ADMIN))
    assert response.status_code == 400
    other = client_for(store, running, admin_token=ADMIN)  # another browser, its own cookie
    other_csrf = csrf_from(other)
    response = client.post(f"/experiments/{KEY}/pause", data=form(other_csrf, admin_token=ADMIN))
    assert response.status_code == 400
    client.delete_cookie(CSRF_COOKIE)
    response = client.post(f"/experiments/{KEY}/pause", data=form(csrf, admin_token=ADMIN))
    assert response.status_code == 400
    assert state(store) == before
    expired = client_for(store, running, admin_token=ADMIN)
    stale = csrf_from(expired)
    running.value += timedelta(days=1)  # the token expires after 12 hours
    response = expired.post(f"/experiments/{KEY}/pause", data=form(stale, admin_token=ADMIN))
    assert response.status_code == 400
    assert state(store) == before


def test_admin_actions_are_get_proof(store: Store, running: Clock) -> None:
    client = client_for(store, running, admin_token=ADMIN)
    before = state(store)
    assert client.get(f"/experiments/{KEY}/pause").status_code == 405
    assert client.get(f"/api/experiments/{KEY}/rollback").status_code in (404, 405)
    assert state(store) == before


def test_pause_resume_promote_rollback_from_the_page_are_audited(
    store: Store, running: Clock
) -> None:
    client = client_for(store, running, admin_token=ADMIN)
    csrf = csrf_from(client)
    response = client.post(f"/experiments/{KEY}/pause", data=form(csrf, admin_token=ADMIN))
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/experiments/{KEY}?done=pause")
    assert (
        "Paused: everyone now gets the control model."
        in client.get(response.headers["Location"]).text
    )
    assert state(store)[0] == "paused"
    assert (
        client.post(f"/experiments/{KEY}/resume", data=form(csrf, admin_token=ADMIN)).status_code
        == 303
    )
    assert state(store)[0] == "running"
    response = client.post(
        f"/experiments/{KEY}/promote", data=form(csrf, admin_token=ADMIN, arm="candidate")
    )
    assert response.status_code == 303
    assert state(store)[0] == "concluded" and state(store)[3] == "ranker-v2"
    with store.transaction() as tx:
        trail = tx.decisions.list(KEY)
    assert [(d.action, d.actor) for d in trail[-3:]] == [
        ("pause", "Ada Lovelace (web)"),
        ("resume", "Ada Lovelace (web)"),
        ("promote", "Ada Lovelace (web)"),
    ]
    assert trail[-1].reason == "checked by hand" and trail[-1].arm_key == "candidate"
    response = client.post(f"/experiments/{KEY}/rollback", data=form(csrf, admin_token=ADMIN))
    assert response.status_code == 303 and state(store)[3] == "ranker-v1"
    page = client.get(f"/experiments/{KEY}").text
    assert "Rolled back" in page and "Ada Lovelace (web)" in page
    assert "Ada Lovelace (web)" in client.get("/models").text
    # Refused by the current state: 409, nothing changes.
    before = state(store)
    again = client.post(f"/experiments/{KEY}/rollback", data=form(csrf, admin_token=ADMIN))
    assert again.status_code == 409 and "already serves its control" in again.text
    assert state(store) == before


def test_admin_inputs_are_validated_before_anything_changes(store: Store, running: Clock) -> None:
    client = client_for(store, running, admin_token=ADMIN)
    csrf = csrf_from(client)
    before = state(store)
    cases = [
        ("pause", form(csrf, admin_token=ADMIN, actor="")),  # who did it is required
        ("pause", form(csrf, admin_token=ADMIN, actor="x" * 101)),
        ("pause", form(csrf, admin_token=ADMIN, actor="bad\x00name")),
        ("promote", form(csrf, admin_token=ADMIN)),  # which arm
        ("promote", form(csrf, admin_token=ADMIN, arm="nope")),
        ("delete", form(csrf, admin_token=ADMIN)),
    ]
    for action, data in cases:
        assert client.post(f"/experiments/{KEY}/{action}", data=data).status_code == 400, data
    assert (
        client.post("/experiments/nope/pause", data=form(csrf, admin_token=ADMIN)).status_code
        == 404
    )
    assert state(store) == before


def test_scripts_act_with_the_admin_bearer_token(store: Store, running: Clock) -> None:
    client = client_for(store, running, admin_token=ADMIN)
    before = state(store)
    url = f"/api/experiments/{KEY}/pause"
    assert client.post(url, json={"actor": "ci"}).status_code == 401
    wrong = client.post(url, json={"actor": "ci"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.is_json
    assert state(store) == before
    ok = client.post(url, json={"actor": "ci"}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200 and ok.get_json()["ok"] is True
    with store.transaction() as tx:
        assert tx.decisions.list(KEY)[-1].actor == "ci (web)"
    # The same bearer token on the page's route needs no CSRF token (no cookie is involved).
    page = client.post(
        f"/experiments/{KEY}/resume",
        data={"actor": "ci"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert page.status_code == 303 and state(store)[0] == "running"


def test_a_web_token_protects_pages_and_api_but_not_health(store: Store, running: Clock) -> None:
    client = client_for(store, running, web_token=READER)
    page = client.get(f"/experiments/{KEY}")
    assert page.status_code == 303 and "/login?next=" in page.headers["Location"]
    api = client.get("/api/experiments")
    assert api.status_code == 401 and api.headers["WWW-Authenticate"].startswith("Bearer")
    bad = client.get("/api/experiments", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    for path in ("/api/experiments", f"/api/experiments/{KEY}/results.csv", "/", "/models"):
        response = client.get(path, headers={"Authorization": f"Bearer {READER}"})
        assert response.status_code == 200, path
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_login_sets_a_signed_session_cookie(store: Store, running: Clock) -> None:
    client = client_for(store, running, web_token=READER, admin_token=ADMIN)
    csrf = csrf_from(client, "/login")
    wrong = client.post("/login", data={"csrf_token": csrf, "token": "nope"})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert client.get("/api/experiments").status_code == 401
    no_csrf = client.post("/login", data={"token": READER})
    assert no_csrf.status_code == 400
    ok = client.post(
        "/login", data={"csrf_token": csrf, "token": READER, "next": f"/experiments/{KEY}"}
    )
    assert ok.status_code == 303 and ok.headers["Location"] == f"/experiments/{KEY}"
    cookie = client.get_cookie(SESSION_COOKIE)
    assert cookie is not None and cookie.http_only and READER not in cookie.value
    assert client.get(f"/experiments/{KEY}").status_code == 200
    assert client.get("/api/experiments").status_code == 200
    # A forged or expired cookie is worthless.
    client.set_cookie(SESSION_COOKIE, cookie.value.split(".")[0] + ".forged")
    assert client.get("/api/experiments").status_code == 401
    client.set_cookie(SESSION_COOKIE, cookie.value)
    running.value += timedelta(hours=13)
    assert client.get("/api/experiments").status_code == 401
    running.value -= timedelta(hours=13)
    out = client.post("/logout", data={"csrf_token": csrf_from(client)})
    assert out.status_code == 303
    assert client.get("/api/experiments").status_code == 401


@pytest.mark.parametrize(
    "target",
    ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"],
)
def test_login_never_redirects_off_site(store: Store, running: Clock, target: str) -> None:
    client = client_for(store, running, web_token=READER)
    csrf = csrf_from(client, "/login")
    ok = client.post("/login", data={"csrf_token": csrf, "token": READER, "next": target})
    assert ok.status_code == 303 and ok.headers["Location"] == "/experiments"


def test_login_page_redirects_when_nothing_is_protected(store: Store, running: Clock) -> None:
    client = client_for(store, running)
    assert client.get("/login").status_code == 303
