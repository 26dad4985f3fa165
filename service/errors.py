"""Errors a stream ends with, named by the gRPC status they become (the servicer maps them)."""

from __future__ import annotations


class StreamError(Exception):
    """End the call with `status` (a grpc.StatusCode name) and a message the client can act on."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def invalid(message: str) -> StreamError:
    return StreamError("INVALID_ARGUMENT", message)
