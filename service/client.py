"""A small synchronous client: stream a file to a server, get interim and final results back.

Used by `speechlora stream` and the benchmarks; any Riva or Google-style client works as well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np

from encoder.audio import SAMPLE_RATE
from service.proto import asr, audio, nmt, speech_grpc


@dataclass(frozen=True)
class StreamResult:
    is_final: bool
    text: str  # interim: stable + unstable parts joined; final: the primary alternative
    stability: float
    start_s: float  # finals: the utterance's start in the stream (0 for interims)
    end_s: float
    audio_processed: float
    alternatives: tuple[tuple[str, str], ...]  # (text, language) of every alternative
    received_at: float  # time.monotonic() on arrival


def channel(address: str, tls_ca: Path | None = None, tls: bool = False) -> grpc.Channel:
    if tls or tls_ca:
        creds = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes() if tls_ca else None)
        return grpc.secure_channel(address, creds)
    return grpc.insecure_channel(address)


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def recognition_config(language: str = "en-US", task: str | None = None, target: str | None = None,
                       **custom: object) -> "asr.RecognitionConfig":
    extra = {k: str(v) for k, v in custom.items() if v is not None}
    if task:
        extra["task"] = task
    if target:
        extra["target_language"] = target
    return asr.RecognitionConfig(encoding=audio.AudioEncoding.LINEAR_PCM, sample_rate_hertz=SAMPLE_RATE,
                                 language_code=language, custom_configuration=extra)


def _chunks(samples: np.ndarray, chunk_ms: int, realtime: bool) -> Iterator[bytes]:
    step = SAMPLE_RATE * chunk_ms // 1000
    start = time.monotonic()
    for i, offset in enumerate(range(0, len(samples), step)):
        if realtime:  # pace by the clock, not by sleeps, so slow sends do not accumulate drift
            delay = start + i * chunk_ms / 1000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield pcm16(samples[offset : offset + step])


def stream(stub: speech_grpc.SpeechStub, samples: np.ndarray, config: "asr.RecognitionConfig",
           translate_to: str | None = None, interim_results: bool = True, chunk_ms: int = 100,
           realtime: bool = False, metadata: tuple = (), timeout: float | None = None) -> Iterator[StreamResult]:
    """Stream 16 kHz float32 audio; yields results as they arrive."""
    streaming = asr.StreamingRecognitionConfig(config=config, interim_results=interim_results)
    if translate_to:
        first = nmt.StreamingTranslateSpeechToTextRequest(config=nmt.StreamingTranslateSpeechToTextConfig(
            asr_config=streaming, translation_config=nmt.TranslationConfig(
                source_language_code=config.language_code, target_language_code=translate_to)))
        make, call = nmt.StreamingTranslateSpeechToTextRequest, stub.StreamingTranslateSpeechToText
    else:
        first = asr.StreamingRecognizeRequest(streaming_config=streaming)
        make, call = asr.StreamingRecognizeRequest, stub.StreamingRecognize

    def requests() -> Iterator:  # a generator, so realtime pacing happens while results stream back
        yield first
        for chunk in _chunks(samples, chunk_ms, realtime):
            yield make(audio_content=chunk)

    for response in call(requests(), metadata=metadata, timeout=timeout):
        now = time.monotonic()
        interim = [r for r in response.results if not r.is_final and r.alternatives]
        if interim:
            yield StreamResult(False, "".join(r.alternatives[0].transcript for r in interim),
                               min(r.stability for r in interim), 0.0, 0.0, interim[-1].audio_processed,
                               tuple((r.alternatives[0].transcript, ",".join(r.alternatives[0].language_code))
                                     for r in interim), now)
        for r in response.results:
            if r.is_final and r.alternatives:
                words = r.alternatives[0].words
                yield StreamResult(True, r.alternatives[0].transcript, r.stability,
                                   words[0].start_time / 1000 if words else 0.0,
                                   words[-1].end_time / 1000 if words else 0.0, r.audio_processed,
                                   tuple((a.transcript, ",".join(a.language_code)) for a in r.alternatives), now)

