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

import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType

import grpc

from abkit.client.common import (
    AttributeValue,
    ClientAssignment,
    TrackEvent,
    attribute_message,
    call_metadata,
    describe,
    open_channel,
)
from abkit.core.model import Reason
from abkit.rpc.convert import REASON_FROM_PROTO
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc

log = logging.getLogger("abkit.client")


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
        self._channel = open_channel(
            target,
            retries=retries,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
        )
        self._stub = pb_grpc.AssignmentServiceStub(self._channel)
        self._timeout = timeout
        self._token = token

    def _metadata(self) -> list[tuple[str, str]]:
        return call_metadata(self._token)

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
                attributes={k: attribute_message(v) for k, v in (attributes or {}).items()},
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
        except (grpc.RpcError, TypeError, ValueError, LookupError, OverflowError) as exc:
            reason = describe(exc)
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
            log.warning("abkit track failed for %d events (%s)", len(events), describe(exc))
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
