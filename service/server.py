"""The grpc.aio server: wiring, lifecycle (load -> warm up -> SERVING -> drain -> stop), signals.

    server = SpeechServer(ServerOptions(port=50051), load_model=lambda: SpeechModel.load())
    await server.start()          # listening at once; health NOT_SERVING until the model is warm
    await server.wait_closed()    # SIGTERM/SIGINT: drain (finish open utterances), then stop

`ServerThread` runs one in a background thread with its own loop (tests, benchmarks, notebooks).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.auth import BearerAuth
from service.batcher import ModelWorker
from service.config import ServerOptions
from service.metrics import Metrics
from service.proto import SERVICE_NAMES, asr_grpc, nmt_grpc, speech_grpc
from service.servicer import (
    Backend,
    RivaAsrServicer,
    RivaTranslationServicer,
    SpeechServicer,
    model_card,
    warmup_audio,
)
from speech.prompts import Task

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class SpeechServer:
    def __init__(self, options: ServerOptions, load_model: Callable[[], object], model_name: str = "default") -> None:
        self.options = options
        self.metrics = Metrics()
        self.backend = Backend(options, self.metrics)
        self._load_model = load_model
        self._model_name = options.model_name or model_name
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._loading: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._stopping: asyncio.Task | None = None
        self._metrics_http = None
        self.port = 0
        self.load_error: BaseException | None = None

    async def start(self) -> int:
        o = self.options
        interceptors = [BearerAuth(o.token)] if o.token else []
        limit = max(o.limits.max_recognize_bytes, o.limits.max_chunk_bytes) + (1 << 20)
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0),
        ])
        speech_servicer = SpeechServicer(self.backend)
        speech_grpc.add_SpeechServicer_to_server(speech_servicer, server)
        asr_grpc.add_RivaSpeechRecognitionServicer_to_server(RivaAsrServicer(self.backend, speech_servicer), server)
        nmt_grpc.add_RivaTranslationServicer_to_server(RivaTranslationServicer(self.backend, speech_servicer), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, _NOT_SERVING)
        address = f"{o.host}:{o.port}"
        if o.tls_cert or o.tls_key:
            if not (o.tls_cert and o.tls_key):
                raise ValueError("TLS needs both a certificate and its key")
            ca = o.tls_client_ca.read_bytes() if o.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(o.tls_key.read_bytes(), o.tls_cert.read_bytes())], root_certificates=ca,
                require_client_auth=ca is not None)
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        if o.metrics_port is not None:
            self._metrics_http = self.metrics.serve_http(o.metrics_port, o.host)
        self._loading = asyncio.create_task(self._load_and_warm())
        log.info("listening on %s:%d (%s); loading the model", o.host, self.port, "TLS" if o.tls_cert else "plaintext")
        return self.port

    async def _load_and_warm(self) -> None:
        try:
            started = time.monotonic()
            model = await asyncio.to_thread(self._load_model)
            worker = ModelWorker(model, self.options.batch, self.metrics.on_batch).start()
            await worker.decode(warmup_audio(), Task())
            self.backend.card = model_card(model, self._model_name)
            self.backend.worker = worker
            if not self.backend.draining:
                for name in ("", *SERVICE_NAMES):
                    await self._health.set(name, _SERVING)
            log.info("model ready in %.1f s; SERVING", time.monotonic() - started)
            self._ready.set()
        except Exception as exc:
            self.load_error = exc
            log.error("model failed to load: %s", exc)
            self._ready.set()

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)
        if self.load_error is not None:
            raise self.load_error

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    def request_stop(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.stop())

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let open streams finish their utterances, then stop."""
        grace = self.options.drain_grace_s if grace is None else grace
        log.info("draining %d open stream(s), grace %.1f s", self.backend.open_streams, grace)
        deadline = time.monotonic() + grace
        await self._health.enter_graceful_shutdown()
        self.backend.drain()
        await self.backend.wait_idle(grace)
        if self._server is not None:
            await self._server.stop(max(0.0, deadline - time.monotonic()))
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self.backend.worker is not None:
            await asyncio.to_thread(self.backend.worker.stop)
        if self._metrics_http is not None:
            self._metrics_http[0].shutdown()
        self._closed.set()
        log.info("stopped")

    async def wait_closed(self) -> None:
        await self._closed.wait()


class ServerThread:
    """A SpeechServer on its own event loop in a daemon thread; `with ServerThread(...) as s: s.port`."""

    def __init__(self, options: ServerOptions, load_model: Callable[[], object], model_name: str = "default",
                 ready_timeout: float = 120.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="speechlora-server", daemon=True)
        self._thread.start()
        self.server: SpeechServer = self._call(self._make(options, load_model, model_name))
        self.port = self._call(self.server.start())
        self._ready_timeout = ready_timeout

    async def _make(self, options, load_model, model_name) -> SpeechServer:
        return SpeechServer(options, load_model, model_name)

    def _call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self) -> "ServerThread":
        self._call(self.server.wait_ready(self._ready_timeout))
        return self

    def stop(self, grace: float = 5.0) -> None:
        if self._loop.is_closed():
            return
        self._call(self.server.stop(grace))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "ServerThread":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
