"""Bearer-token auth: every call but health checks carries `authorization: Bearer <token>`."""

from __future__ import annotations

import hmac

import grpc

# Load balancers probe health without credentials; everything else needs the token.
OPEN_SERVICES = ("/grpc.health.v1.Health/",)


def _deny(context: grpc.aio.ServicerContext, message: str):
    return context.abort(grpc.StatusCode.UNAUTHENTICATED, message)


def _rejecting(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with UNAUTHENTICATED."""

    async def unary(request, context):
        await _deny(context, message)

    async def streaming(request_or_iterator, context):
        await _deny(context, message)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)


class BearerAuth(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty token")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        given = metadata.get("authorization")
        if given is None:
            return _rejecting(handler, "missing authorization metadata: send 'authorization: Bearer <token>'")
        if not hmac.compare_digest(str(given).encode(), self._expected):
            return _rejecting(handler, "invalid bearer token")
        return handler
