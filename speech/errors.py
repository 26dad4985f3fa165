"""Errors a user can fix. The CLI prints them as one line; the server maps them to a gRPC status."""


class UserError(Exception):
    """Bad input from the user (a path, a flag, a file, a config). Shown as one line, never a traceback."""


class CheckpointError(UserError):
    """A model folder that is missing, not a Phi-4-multimodal checkpoint, or damaged."""


class AudioError(UserError):
    """Audio that cannot be decoded or holds nothing to recognize (empty, NaN, not audio)."""
