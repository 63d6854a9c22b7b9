"""``abkit.client.Client``: the Python client a serving process uses to ask for model versions.

It follows the OpenFeature rule that **evaluation never throws**: whatever goes wrong (server
down, deadline exceeded, unknown experiment, a bad attribute), :meth:`Client.assign` returns the
caller's default model version with reason ``ERROR`` and logs why -- the caller's request goes on
with the control model. Tracking never throws either; it returns False and logs.

* one channel, reused for every call (create one client per process and share it);
* a deadline on every call (``timeout``, default 100 ms);
* a small retry policy, done by gRPC itself: UNAVAILABLE is retried up to ``retries`` times
  with exponential back-off (10 ms, 20 ms, ...), within the deadline;
* idempotent tracking: the client gives every event an id, so a retried Track is stored once;
* the caller's OpenTelemetry context is sent as W3C ``traceparent``, so exposures and events
  carry the caller's trace id;
* TLS (``root_certificates``, and a client certificate for mutual TLS) and a bearer token.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc
from opentelemetry.propagate import inject

from abkit.core.model import Reason
from abkit.rpc.convert import REASON_FROM_PROTO
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

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


def _service_config(retries: int) -> str:
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


def _attribute(value: AttributeValue) -> Any:
    if isinstance(value, bool):  # before int: bool is an int
        return pb.AttributeValue(bool_value=value)
    if isinstance(value, int | float):
        return pb.AttributeValue(number_value=float(value))
    if isinstance(value, str):
        return pb.AttributeValue(string_value=value)
    raise TypeError(f"attribute values are str, int, float or bool, got {type(value).__name__}")


class Client:
    def __init__(
        self,
        target: str,
        *,
        timeout: float = 0.1,
        retries: int = 2,
        token: str | None = None,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
    ) -> None:
        options = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _service_config(retries)),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        if root_certificates is not None or certificate_chain is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.AssignmentServiceStub(self._channel)
        self._timeout = timeout
        self._token = token

    def _metadata(self) -> list[tuple[str, str]]:
        carrier: dict[str, str] = {}
        inject(carrier)
        metadata = list(carrier.items())
        if self._token:
            metadata.append(("authorization", f"Bearer {self._token}"))
        return metadata

    # -- assignment ------------------------------------------------------------------------------

    def assign(
        self,
        unit_id: str,
        experiment_key: str,
        *,
        default: str,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> ClientAssignment:
        """The model version ``unit_id`` should get in ``experiment_key``; never raises.

        ``default`` (normally the control's model version) is returned on any failure.
        """
        return self.assign_many(unit_id, {experiment_key: default}, attributes=attributes)[
            experiment_key
        ]

    def assign_many(
        self,
        unit_id: str,
        defaults: Mapping[str, str],
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> dict[str, ClientAssignment]:
        """One assignment per experiment in ``defaults`` (key -> default version); never raises."""
        try:
            request = pb.AssignRequest(
                unit_id=unit_id,
                attributes={k: _attribute(v) for k, v in (attributes or {}).items()},
                experiment_keys=list(defaults),
            )
            reply = self._stub.Assign(request, timeout=self._timeout, metadata=self._metadata())
            answers = {
                a.experiment_key: ClientAssignment(
                    a.experiment_key,
                    a.arm_key,
                    a.model_version,
                    REASON_FROM_PROTO.get(a.reason, Reason.ERROR),
                    a.in_experiment,
                )
                for a in reply.assignments
            }
            missing = [k for k in defaults if k not in answers]
            if missing:
                raise LookupError(f"the server did not answer for {missing}")
            return answers
        except (grpc.RpcError, TypeError, ValueError, LookupError) as exc:
            reason = _describe(exc)
            log.warning(
                "abkit assign failed for %s (%s); serving the defaults", list(defaults), reason
            )
            return {
                key: ClientAssignment(key, "", default, Reason.ERROR, False, reason)
                for key, default in defaults.items()
            }

    # -- tracking --------------------------------------------------------------------------------

    def track(
        self,
        unit_id: str,
        metric: str,
        value: float = 1.0,
        *,
        occurred_at: datetime | None = None,
        event_id: str = "",
    ) -> bool:
        """Record one KPI event; False (and logged) when it could not be sent. Never raises."""
        return self.track_many([TrackEvent(unit_id, metric, value, occurred_at, event_id)])

    def track_many(self, events: Sequence[TrackEvent]) -> bool:
        """Record a batch (at most 1000); all or nothing. Never raises."""
        try:
            requests = []
            for e in events:
                request = pb.TrackRequest(
                    unit_id=e.unit_id,
                    metric=e.metric,
                    value=e.value,
                    event_id=e.event_id or os.urandom(16).hex(),  # retries stay idempotent
                )
                if e.occurred_at is not None:
                    request.occurred_at.FromDatetime(e.occurred_at)
                requests.append(request)
            self._stub.TrackBatch(
                pb.TrackBatchRequest(events=requests),
                timeout=self._timeout,
                metadata=self._metadata(),
            )
            return True
        except (grpc.RpcError, TypeError, ValueError) as exc:
            log.warning("abkit track failed for %d events (%s)", len(events), _describe(exc))
            return False

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else ""
        return f"{code.name if code else 'UNKNOWN'}: {details}"
    return f"{type(exc).__name__}: {exc}"
