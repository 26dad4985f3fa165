"""gRPC servicers: protos in and out, statuses for errors; the work happens in session/batcher.

One `Backend` holds what every call shares (model worker, options, metrics, stream slots, drain
state); three thin servicers expose it under speechlora's own service name and under Riva's
(`nvidia.riva.asr.RivaSpeechRecognition`, `nvidia.riva.nmt.RivaTranslation`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import grpc
import numpy as np

from encoder.audio import check_audio, decode_audio_bytes, pcm16_to_float, to_mono_16k
from service.batcher import ModelWorker
from service.config import ServerOptions
from service.errors import StreamError, invalid
from service.metrics import Metrics
from service.proto import asr, asr_grpc, nmt, nmt_grpc, speech, speech_grpc
from service.requests import CUSTOM_KEYS, is_pcm, recognition_options
from service.session import STABLE, UNSTABLE, Final, Interim, StreamOptions, StreamSession, recognize
from speech.errors import UserError
from speech.prompts import LANGUAGES, TASKS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCard:
    """What GetConfig reports about the loaded model."""

    name: str
    adapter: str
    details: dict[str, str]


def _words(text: str, start_s: float, end_s: float) -> list:
    """WordInfo in ms. The utterance bounds are VAD times; inner boundaries are spread by word length
    (the model emits no alignment), which is enough to place a word within its utterance."""
    words = text.split()
    if not words:
        return []
    total = sum(len(w) + 1 for w in words)
    out, t = [], start_s
    for w in words:
        step = (end_s - start_s) * (len(w) + 1) / total
        out.append(asr.WordInfo(word=w, start_time=round(t * 1000), end_time=round((t + step) * 1000)))
        t += step
    return out


def final_alternatives(event: Final, options: StreamOptions) -> "asr.SpeechRecognitionResult":
    texts = [(event.texts.transcript, options.language), (event.texts.translation, options.target_language)]
    if options.primary == "translation":
        texts.reverse()
    alternatives = [
        asr.SpeechRecognitionAlternative(transcript=text, language_code=[lang or ""],
                                         words=_words(text, event.start_s, event.end_s))
        for text, lang in texts if text is not None
    ]
    return alternatives


def streaming_results(event: Interim | Final, options: StreamOptions) -> list:
    lang = options.target_language if options.primary == "translation" else options.language
    if isinstance(event, Final):
        return [asr.StreamingRecognitionResult(alternatives=final_alternatives(event, options), is_final=True,
                                               stability=1.0, audio_processed=event.audio_processed)]
    return [
        asr.StreamingRecognitionResult(
            alternatives=[asr.SpeechRecognitionAlternative(transcript=text, language_code=[lang or ""])],
            is_final=False, stability=stability, audio_processed=event.audio_processed)
        for text, stability in ((event.stable, STABLE), (event.unstable, UNSTABLE)) if text
    ]


class Backend:
    """Shared state of one server: model worker, limits, slots, readiness and drain."""

    def __init__(self, options: ServerOptions, metrics: Metrics) -> None:
        self.options = options
        self.metrics = metrics
        self.worker: ModelWorker | None = None
        self.card = ModelCard("", "", {})
        self.draining = False
        self._streams: dict[asyncio.Task, StreamSession] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.worker is not None

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def check_available(self) -> None:
        if self.draining:
            raise StreamError("UNAVAILABLE", "server is shutting down; retry on another instance")
        if self.worker is None:
            raise StreamError("UNAVAILABLE", "model is still loading; retry shortly")

    def drain(self) -> None:
        """Stop taking audio on every open stream; each finishes its open utterance, then ends."""
        self.draining = True
        for reader, session in list(self._streams.items()):
            reader.cancel()
            session.finish()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # ---- calls ---------------------------------------------------------------------------
    async def stream(self, requests: AsyncIterator, parse: Callable, make_response: Callable) -> AsyncIterator:
        """Shared body of StreamingRecognize and StreamingTranslateSpeechToText."""
        self.check_available()
        if len(self._streams) >= self.options.limits.max_streams:
            raise StreamError("RESOURCE_EXHAUSTED", f"{len(self._streams)} streams are open, the server's limit "
                              f"(max_streams={self.options.limits.max_streams}); retry later")
        requests = aiter(requests)
        first = await anext(requests, None)
        if first is None:
            raise invalid("empty stream: the first message must carry the config")
        options = parse(first)
        session = StreamSession(options, self.worker, self.metrics.first_partial.observe,
                                self.metrics.final_latency.observe)
        reader = asyncio.create_task(self._read(requests, session))
        self._streams[reader] = session
        self._idle.clear()
        self.metrics.active_streams.inc()
        try:
            async for event in session.events():
                yield make_response(results=streaming_results(event, options))
        finally:
            reader.cancel()
            await session.close()
            del self._streams[reader]
            self.metrics.active_streams.dec()
            if not self._streams:
                self._idle.set()

    async def _read(self, requests: AsyncIterator, session: StreamSession) -> None:
        try:
            async for request in requests:
                kind = request.WhichOneof("streaming_request")
                if kind not in (None, "audio_content"):
                    raise invalid(f"{kind} may only be sent once, in the first message")
                session.push(request.audio_content)
            session.finish()
        except StreamError as exc:
            session.abort(exc)
        except asyncio.CancelledError:  # drain or end of call: finish() is the drainer's job
            raise
        except Exception as exc:  # e.g. the transport failed mid-read
            session.abort(StreamError("INTERNAL", f"reading the stream failed: {exc}"))

    async def recognize(self, request) -> "asr.RecognizeResponse":
        self.check_available()
        options = recognition_options(request.config, self.options.defaults, self.options.limits,
                                      self.card.name, streaming=False)
        data = request.audio
        if len(data) > self.options.limits.max_recognize_bytes:
            raise invalid(f"audio of {len(data)} bytes exceeds the {self.options.limits.max_recognize_bytes}-byte "
                          "Recognize limit; use StreamingRecognize for long audio")
        if not data:
            raise invalid("audio is empty")
        try:
            if is_pcm(request.config):
                if len(data) % (2 * options.channels):
                    raise invalid(f"LINEAR_PCM audio of {len(data)} bytes is not a whole number of 16-bit "
                                  f"{options.channels}-channel frames")
                samples = pcm16_to_float(data).reshape(-1, options.channels)
                audio = check_audio(to_mono_16k(samples, options.sample_rate), "audio", allow_silence=True)
            else:
                audio = decode_audio_bytes(data, "audio", allow_silence=True)
        except UserError as exc:
            raise invalid(str(exc)) from None
        finals = await recognize(audio, options.task, options.vad, self.worker)
        return asr.RecognizeResponse(results=[
            asr.SpeechRecognitionResult(alternatives=final_alternatives(f, options), audio_processed=f.end_s)
            for f in finals
        ])

    def server_config(self) -> "speech.ServerConfig":
        limits, batch, d = self.options.limits, self.options.batch, self.options.defaults
        return speech.ServerConfig(
            version=_version(),
            models=[speech.ModelInfo(name=self.card.name, adapter=self.card.adapter, languages=list(LANGUAGES),
                                     tasks=list(TASKS), details=self.card.details)],
            limits=speech.Limits(
                max_streams=limits.max_streams, max_stream_seconds=limits.max_stream_seconds,
                max_chunk_bytes=limits.max_chunk_bytes, max_recognize_bytes=limits.max_recognize_bytes,
                min_sample_rate_hertz=limits.min_sample_rate, max_sample_rate_hertz=limits.max_sample_rate,
                max_batch_size=batch.max_batch_size, max_wait_ms=int(batch.max_wait_ms)),
            endpointing=speech.Endpointing(
                vad_aggressiveness=d.vad.aggressiveness, min_silence_ms=d.vad.min_silence_ms,
                speech_pad_ms=d.vad.speech_pad_ms, max_speech_seconds=d.vad.max_speech_s,
                min_speech_ms=d.vad.min_speech_ms, interim_interval_ms=d.interim_interval_ms),
            custom_configuration_keys=list(CUSTOM_KEYS),
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("speechlora")
    except PackageNotFoundError:
        return "0+source"


async def _guard(context: grpc.aio.ServicerContext, backend: Backend, method: str, call):
    """Run a unary call, turning our errors into statuses and counting the outcome."""
    code = "OK"
    try:
        return await call()
    except StreamError as exc:
        code = exc.status
        await context.abort(grpc.StatusCode[exc.status], exc.message)
    finally:
        backend.metrics.requests.labels(method, code).inc()


async def _guard_stream(context: grpc.aio.ServicerContext, backend: Backend, method: str, stream):
    code = "OK"
    started = time.monotonic()
    try:
        async for response in stream:
            yield response
    except StreamError as exc:
        code = exc.status
        await context.abort(grpc.StatusCode[exc.status], exc.message)
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    finally:
        backend.metrics.requests.labels(method, code).inc()
        log.debug("%s ended %s after %.2f s", method, code, time.monotonic() - started)


def _recognition_parser(backend: Backend):
    def parse(first) -> StreamOptions:
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise invalid("the first message must carry streaming_config (audio_content came first)")
        cfg = first.streaming_config
        return recognition_options(cfg.config, backend.options.defaults, backend.options.limits, backend.card.name,
                                   streaming=True, interim_results=cfg.interim_results)
    return parse


def _translation_parser(backend: Backend):
    def parse(first) -> StreamOptions:
        if first.WhichOneof("streaming_request") != "config":
            raise invalid("the first message must carry config (audio_content came first)")
        cfg = first.config
        return recognition_options(cfg.asr_config.config, backend.options.defaults, backend.options.limits,
                                   backend.card.name, streaming=True, interim_results=cfg.asr_config.interim_results,
                                   translation=cfg.translation_config)
    return parse


class SpeechServicer(speech_grpc.SpeechServicer):
    """speechlora.v1.Speech."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def Recognize(self, request, context):
        return await _guard(context, self.backend, "Recognize", lambda: self.backend.recognize(request))

    async def StreamingRecognize(self, request_iterator, context):
        body = self.backend.stream(request_iterator, _recognition_parser(self.backend),
                                   asr.StreamingRecognizeResponse)
        async for response in _guard_stream(context, self.backend, "StreamingRecognize", body):
            yield response

    async def StreamingTranslateSpeechToText(self, request_iterator, context):
        body = self.backend.stream(request_iterator, _translation_parser(self.backend),
                                   nmt.StreamingTranslateSpeechToTextResponse)
        async for response in _guard_stream(context, self.backend, "StreamingTranslateSpeechToText", body):
            yield response

    async def GetConfig(self, request, context):
        return self.backend.server_config()


class RivaAsrServicer(asr_grpc.RivaSpeechRecognitionServicer):
    """nvidia.riva.asr.RivaSpeechRecognition, for the unmodified Riva client."""

    def __init__(self, backend: Backend, speech_servicer: SpeechServicer) -> None:
        self.backend = backend
        self.Recognize = speech_servicer.Recognize
        self.StreamingRecognize = speech_servicer.StreamingRecognize

    async def GetRivaSpeechRecognitionConfig(self, request, context):
        config = self.backend.server_config()
        model = config.models[0]
        if request.model_name and request.model_name != model.name:
            return asr.RivaSpeechRecognitionConfigResponse()
        parameters = {
            "type": "online", "streaming": "true", "language_code": ",".join(model.languages),
            "tasks": ",".join(model.tasks), "max_streams": str(config.limits.max_streams),
            "custom_configuration_keys": ",".join(config.custom_configuration_keys), **dict(model.details),
        }
        return asr.RivaSpeechRecognitionConfigResponse(
            model_config=[asr.RivaSpeechRecognitionConfigResponse.Config(model_name=model.name, parameters=parameters)])


class RivaTranslationServicer(nmt_grpc.RivaTranslationServicer):
    """nvidia.riva.nmt.RivaTranslation: speech-to-text translation (text-to-text is UNIMPLEMENTED)."""

    def __init__(self, backend: Backend, speech_servicer: SpeechServicer) -> None:
        self.backend = backend
        self.StreamingTranslateSpeechToText = speech_servicer.StreamingTranslateSpeechToText

    async def ListSupportedLanguagePairs(self, request, context):
        languages = list(LANGUAGES)
        pair = nmt.AvailableLanguageResponse.LanguagePair(src_lang=languages, tgt_lang=languages)
        return nmt.AvailableLanguageResponse(languages={self.backend.card.name: pair})


def model_card(model, name: str) -> ModelCard:
    info = model.describe()
    details = {k: str(v) for k, v in info.items() if k in ("layout", "device", "dtype", "max_clip_seconds", "path")}
    details.update({f"parameters.{k}": str(v) for k, v in (info.get("parameters") or {}).items()})
    return ModelCard(name=name, adapter=str(info.get("adapter") or ""), details=details)


def warmup_audio() -> np.ndarray:
    """One second of low noise: enough to run every layer once before reporting SERVING."""
    return (np.random.default_rng(0).standard_normal(16_000) * 0.01).astype(np.float32)
