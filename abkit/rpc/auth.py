"""Bearer-token authentication of RPCs (``ABKIT_API_TOKEN``).

Track, TrackBatch and LogExposures write data, and WatchConfig hands out the whole config
(overrides name units), so they always need the token when one is configured; Assign and
AssignBatch need it too with ``ABKIT_API_TOKEN_FOR_ASSIGN=true``. Health and reflection stay
open (probes and grpcurl). A refused call is answered UNAUTHENTICATED before the servicer runs,
so it can never write anything. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

WRITE_METHODS = frozenset({"Track", "TrackBatch", "LogExposures", "WatchConfig"})
STREAMING_METHODS = frozenset({"WatchConfig"})
READ_METHODS = frozenset({"Assign", "AssignBatch"})
SERVICE = "/abkit.v1.AssignmentService/"


def _refuse(message: str, method: str) -> Any:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if method in STREAMING_METHODS:
        return grpc.unary_stream_rpc_method_handler(handler)
    return grpc.unary_unary_rpc_method_handler(handler)


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, token: str, *, protect_assign: bool) -> None:
        self._expected = f"Bearer {token}".encode()
        self._protected = WRITE_METHODS | (READ_METHODS if protect_assign else frozenset())

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        method: str = handler_call_details.method
        name = method[len(SERVICE) :]
        if not method.startswith(SERVICE) or name not in self._protected:
            return await continuation(handler_call_details)
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                presented = value
                break
        if not presented:
            return _refuse(
                "missing credentials: send metadata 'authorization: Bearer <token>'", name
            )
        if not hmac.compare_digest(presented.encode(), self._expected):
            return _refuse("invalid token", name)
        return await continuation(handler_call_details)
