"""What the remote and the local client share: answers, events, the channel, error text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from opentelemetry.propagate import inject

from abkit.core.model import Reason
from abkit.v1 import assignment_pb2 as pb

AttributeValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class ClientAssignment:
    """What to serve: route on ``model_version``. ``error`` is set when the default was used."""

    experiment_key: str
    arm_key: str
    model_version: str
    reason: Reason
    in_experiment: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TrackEvent:
    unit_id: str
    metric: str
    value: float = 1.0
    occurred_at: datetime | None = None
    event_id: str = ""


def service_config(retries: int) -> str:
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": "abkit.v1.AssignmentService"}],
                    "retryPolicy": {
                        "maxAttempts": retries + 1,
                        "initialBackoff": "0.01s",
                        "maxBackoff": "0.2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def attribute_message(value: AttributeValue) -> Any:
    if isinstance(value, bool):  # before int: bool is an int
        return pb.AttributeValue(bool_value=value)
    if isinstance(value, int | float):
        return pb.AttributeValue(number_value=float(value))
    if isinstance(value, str):
        return pb.AttributeValue(string_value=value)
    raise TypeError(f"attribute values are str, int, float or bool, got {type(value).__name__}")


def open_channel(
    target: str,
    *,
    retries: int,
    root_certificates: bytes | None = None,
    certificate_chain: bytes | None = None,
    private_key: bytes | None = None,
    options: tuple[tuple[str, Any], ...] = (),
) -> grpc.Channel:
    """A channel with the retry policy, keepalive and (when given) TLS or mutual TLS."""
    all_options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(retries)),
        ("grpc.keepalive_time_ms", 30_000),
        *options,
    ]
    if root_certificates is not None or certificate_chain is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
        )
        return grpc.secure_channel(target, credentials, options=all_options)
    return grpc.insecure_channel(target, options=all_options)


def call_metadata(token: str | None) -> list[tuple[str, str]]:
    """The caller's trace (W3C ``traceparent``) and the bearer token, as call metadata."""
    carrier: dict[str, str] = {}
    inject(carrier)
    metadata = list(carrier.items())
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    return metadata


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else ""
        return f"{code.name if code else 'UNKNOWN'}: {details}"
    return f"{type(exc).__name__}: {exc}"
