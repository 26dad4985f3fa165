"""The server's knobs, as frozen dataclasses: limits, batching, endpointing defaults, security."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from encoder.vad import VadOptions
from service.batcher import BatchOptions


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the server; each breach has its own gRPC status."""

    max_streams: int = 32  # concurrent streaming calls -> RESOURCE_EXHAUSTED
    max_stream_seconds: float = 3600.0  # audio per stream -> OUT_OF_RANGE
    max_chunk_bytes: int = 256 * 1024  # one audio_content message -> INVALID_ARGUMENT
    max_recognize_bytes: int = 32 * 1024 * 1024  # audio of one Recognize call -> INVALID_ARGUMENT
    min_sample_rate: int = 8_000
    max_sample_rate: int = 48_000
    max_channels: int = 8

    def __post_init__(self) -> None:
        if self.max_streams < 1 or self.max_stream_seconds <= 0 or self.max_chunk_bytes < 2:
            raise ValueError(f"limits must be positive: {self}")


@dataclass(frozen=True)
class StreamDefaults:
    """Endpointing and interim cadence for requests that do not set their own."""

    vad: VadOptions = field(default_factory=VadOptions)
    interim_interval_ms: int = 500


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    limits: Limits = field(default_factory=Limits)
    batch: BatchOptions = field(default_factory=BatchOptions)
    defaults: StreamDefaults = field(default_factory=StreamDefaults)
    token: str | None = None  # bearer token every call but health must carry
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed
    metrics_port: int | None = None  # Prometheus /metrics over HTTP; None = off
    drain_grace_s: float = 10.0  # SIGTERM: open utterances get this long to finish
    model_name: str = ""  # the name RecognitionConfig.model may use ("" always works)
