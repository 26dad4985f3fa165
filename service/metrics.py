"""Prometheus metrics, in a registry of the server's own (so several servers can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from service.batcher import BatchStats

_LATENCY = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("speechlora_requests", "Finished calls by method and status code",
                                ["method", "code"], registry=r)
        self.active_streams = Gauge("speechlora_active_streams", "Streaming calls now open", registry=r)
        self.queue_depth = Gauge("speechlora_queue_depth", "Decode requests waiting for the model worker",
                                 registry=r)
        self.batch_size = Histogram("speechlora_batch_size", "Clips per model batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.audio_seconds = Counter("speechlora_decoded_audio_seconds", "Audio seconds decoded by the model",
                                     registry=r)
        self.model_seconds = Counter("speechlora_model_busy_seconds", "Seconds the model worker spent decoding",
                                     registry=r)
        self.rtfx = Gauge("speechlora_rtfx", "Audio seconds per model second, over the last batch", registry=r)
        self.queue_wait = Histogram("speechlora_queue_wait_seconds", "Time a decode request waited for its batch",
                                    buckets=_LATENCY, registry=r)
        self.first_partial = Histogram("speechlora_time_to_first_partial_seconds",
                                       "From an utterance's first audio chunk to its first interim result",
                                       buckets=_LATENCY, registry=r)
        self.final_latency = Histogram("speechlora_time_to_final_seconds",
                                       "From the endpoint (trailing silence received) to the final result",
                                       buckets=_LATENCY, registry=r)

    def on_batch(self, stats: BatchStats) -> None:
        """Called on the model worker thread after every batch (prometheus_client is thread-safe)."""
        self.batch_size.observe(stats.size)
        self.audio_seconds.inc(stats.audio_s)
        self.model_seconds.inc(stats.model_s)
        if stats.model_s > 0:
            self.rtfx.set(stats.audio_s / stats.model_s)
        for wait in stats.waits_s:
            self.queue_wait.observe(wait)
        self.queue_depth.set(stats.queue_depth)

    def serve_http(self, port: int, host: str = "127.0.0.1"):
        """Expose /metrics; returns (server, thread) so the caller can shut it down."""
        return start_http_server(port, addr=host, registry=self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0
