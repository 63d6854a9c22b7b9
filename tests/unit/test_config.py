from __future__ import annotations

import asyncio
import sys

import pytest

from abkit.config import DEFAULT_DATABASE_URL, Settings
from abkit.errors import ValidationError
from abkit.rpc import loops


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({"USER": "ada"})
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite:///abkit.db"
    assert settings.actor == "ada"
    assert settings.otel_traces_exporter == "none"


def test_reads_prefixed_variables_and_standard_otel_ones() -> None:
    settings = Settings.from_env(
        {
            "ABKIT_DATABASE_URL": "postgresql+psycopg://db/abkit",
            "ABKIT_GRPC_PROCESSES": "4",
            "ABKIT_WRITER_FLUSH_SECONDS": "0.5",
            "ABKIT_ACTOR": "ci-pipeline",
            "OTEL_TRACES_EXPORTER": "console",
            "DATABASE_URL": "ignored",
        }
    )
    assert settings.database_url == "postgresql+psycopg://db/abkit"
    assert settings.grpc_processes == 4
    assert settings.writer_flush_seconds == 0.5
    assert settings.actor == "ci-pipeline"
    assert settings.otel_traces_exporter == "console"


@pytest.mark.parametrize(
    ("env", "field", "words"),
    [
        ({"ABKIT_GRPC_PROCESSES": "many"}, "ABKIT_GRPC_PROCESSES", "whole number"),
        ({"ABKIT_GRPC_PROCESSES": "0"}, "ABKIT_GRPC_PROCESSES", "at least 1"),
        ({"ABKIT_WRITER_FLUSH_SECONDS": "nan"}, "ABKIT_WRITER_FLUSH_SECONDS", "positive"),
        ({"ABKIT_WRITER_FLUSH_SECONDS": "-1"}, "ABKIT_WRITER_FLUSH_SECONDS", "positive"),
        (
            {"ABKIT_GRPC_SWITCH_INTERVAL_SECONDS": "0"},
            "ABKIT_GRPC_SWITCH_INTERVAL_SECONDS",
            "positive",
        ),
        ({"ABKIT_GRPC_EVENT_LOOP": "trio"}, "ABKIT_GRPC_EVENT_LOOP", "auto, asyncio or uvloop"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.from_env(env)
    assert info.value.field == field and words in info.value.message


def test_the_event_loop_falls_back_to_asyncio_only_when_asked_for_auto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed = loops.new_loop("auto")
    assert type(installed).__module__ == "uvloop"  # abkit[dev] installs it
    installed.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    loop = loops.new_loop("auto")
    assert isinstance(loop, asyncio.BaseEventLoop) and type(loop).__module__.startswith("asyncio")
    loop.close()
    assert Settings.from_env({"ABKIT_GRPC_EVENT_LOOP": "auto"}).grpc_event_loop == "auto"
    with pytest.raises(ValidationError) as info:
        Settings.from_env({"ABKIT_GRPC_EVENT_LOOP": "uvloop"})
    assert info.value.field == "ABKIT_GRPC_EVENT_LOOP" and "abkit[fast]" in info.value.message
    with pytest.raises(ImportError):
        loops.new_loop("uvloop")
    with pytest.raises(ValueError, match="trio"):
        loops.new_loop("trio")


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.database_url = "x"  # type: ignore[misc]


def test_a_retired_variable_is_reported_not_silently_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="abkit.config"):
        Settings.from_env({"ABKIT_GRPC_WORKERS": "16"})
    assert "ABKIT_GRPC_WORKERS is no longer read" in caplog.text
    assert "ABKIT_GRPC_PROCESSES" in caplog.text
