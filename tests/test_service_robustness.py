"""The server under abuse: random configs and byte streams (hypothesis), raw garbage on the wire,
and SIGTERM on a real `speechlora serve` process with a stream mid-utterance."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_support import conversation

from encoder.audio import SAMPLE_RATE
from service.client import recognition_config
from service.config import Limits, ServerOptions
from service.proto import asr, speech_grpc
from service.server import ServerThread

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
           grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def server(tiny_model):
    limits = Limits(max_streams=4, max_stream_seconds=3.0, max_chunk_bytes=16_000)
    with ServerThread(ServerOptions(port=0, limits=limits), lambda: tiny_model) as srv:
        yield srv


custom_values = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str),
                          st.text(max_size=8))
configs = st.builds(
    asr.RecognitionConfig,
    encoding=st.sampled_from([0, 1, 2, 3, 4, 20, 99]),
    sample_rate_hertz=st.one_of(st.sampled_from([8000, 16000, 22050, 48000]), st.integers(-10, 10**6)),
    language_code=st.sampled_from(["", "en-US", "fr", "xx", "de-DE", "English"]),
    audio_channel_count=st.integers(-2, 12),
    model=st.sampled_from(["", "default", "other"]),
    custom_configuration=st.dictionaries(
        st.sampled_from(["task", "target_language", "min_silence_ms", "speech_pad_ms", "max_speech_s",
                         "vad_aggressiveness", "interim_interval_ms", "min_speech_ms", "bogus"]),
        custom_values, max_size=3),
)
messages = st.lists(st.one_of(st.binary(max_size=20_000).map(lambda b: asr.StreamingRecognizeRequest(audio_content=b)),
                              configs.map(lambda c: asr.StreamingRecognizeRequest(
                                  streaming_config=asr.StreamingRecognitionConfig(config=c, interim_results=True)))),
                    max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=configs, rest=messages, config_first=st.booleans())
def test_random_configs_and_bytes_never_hurt_the_server(server, first, rest, config_first):
    requests = ([asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(config=first))]
                if config_first else []) + rest
    with grpc.insecure_channel(server.address) as ch:
        call = speech_grpc.SpeechStub(ch).StreamingRecognize(iter(requests), timeout=20)
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass
        assert call.code() in ALLOWED, (call.code(), call.details())
        if call.code() != grpc.StatusCode.OK:
            assert call.details()  # every refusal says why
    _wait_for(lambda: server.server.backend.open_streams == 0)


def test_server_is_healthy_and_serving_after_abuse(server):
    # Raw bytes that are not a protobuf message at all.
    with grpc.insecure_channel(server.address) as ch:
        raw = ch.stream_stream("/speechlora.v1.Speech/StreamingRecognize",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError):
            list(raw(iter([b"\xff\xff\xff\xff garbage"]), timeout=10))
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        talk = conversation(["seven eight nine"], lead_s=0.2, tail_s=0.8)
        pcm = talk.pcm16()
        requests = [asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
            config=recognition_config()))] + [asr.StreamingRecognizeRequest(audio_content=pcm[i:i + 3200])
                                              for i in range(0, len(pcm), 3200)]
        finals = [r for resp in speech_grpc.SpeechStub(ch).StreamingRecognize(iter(requests), timeout=30)
                  for r in resp.results if r.is_final]
        assert len(finals) == 1
    assert server.server.backend.open_streams == 0
    assert server.server.metrics.value("speechlora_active_streams") == 0


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_sigterm_drains_open_utterances_then_exits(tiny_native):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "speech.cli", "serve", "--model", str(tiny_native), "--port", "0",
                             "--drain-grace", "10"], cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if match := re.search(r"serving .* on 127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
            if "speechlora: ready" in line:
                break
        assert port, "".join(lines)
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep draining stderr
        talk = conversation(["the quick brown fox jumps over the lazy dog"], lead_s=0.3)
        start, end = talk.spans[0]
        cut = int((start + 0.6 * (end - start)) * SAMPLE_RATE)  # stop sending mid-utterance
        pcm = talk.pcm16()[: cut * 2]
        hold = threading.Event()

        def requests():
            yield asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
                config=recognition_config(), interim_results=False))
            for i in range(0, len(pcm), 3200):
                yield asr.StreamingRecognizeRequest(audio_content=pcm[i:i + 3200])
            hold.wait(30)  # the client keeps the stream open: only the drain can end it

        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = speech_grpc.SpeechStub(ch).StreamingRecognize(requests(), timeout=30)
            results = []

            def read():
                for response in call:
                    results.extend(response.results)

            reader = threading.Thread(target=read)
            reader.start()
            time.sleep(1.0)  # let the audio arrive
            proc.send_signal(signal.SIGTERM)
            reader.join(20)
            hold.set()
        assert call.code() == grpc.StatusCode.OK, call.details()
        finals = [r for r in results if r.is_final]
        assert len(finals) == 1  # the open utterance was finished, not dropped
        assert finals[0].alternatives[0].words[0].start_time / 1000 < start
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

