"""The gRPC service end to end: a real grpc.aio server on 127.0.0.1, real webrtcvad, espeak-ng speech.

The model is a tiny random-weight checkpoint: its text is garbage, but every mechanism (VAD cuts,
interims, finals, batching, limits, auth, health, drain) is real. Assertions that need real words
use the built-in model and skip when it is not installed.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_support import conversation

from encoder.audio import SAMPLE_RATE
from service.client import recognition_config, stream
from service.config import Limits, ServerOptions
from service.proto import asr, audio, nmt, speech, speech_grpc
from service.server import ServerThread

TEXTS = ["the quick brown fox jumps over the lazy dog", "please leave your message after the tone",
         "seven eight nine"]


@pytest.fixture(scope="module")
def talk():
    return conversation(TEXTS)


@pytest.fixture(scope="module")
def server(tiny_model):
    with ServerThread(ServerOptions(port=0), lambda: tiny_model, model_name="tiny") as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as ch:
        yield speech_grpc.SpeechStub(ch)


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _paced(samples: np.ndarray, speed: float = 2.0, chunk_ms: int = 100):
    """Chunks of 16-bit PCM at `speed` x real time (by the clock, so pacing does not drift)."""
    step = SAMPLE_RATE * chunk_ms // 1000
    start = time.monotonic()
    for i, offset in enumerate(range(0, len(samples), step)):
        delay = start + i * chunk_ms / 1000 / speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield (np.clip(samples[offset:offset + step], -1, 1) * 32767).astype("<i2").tobytes()


def _streaming_requests(config, chunks, interim=True):
    yield asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(config=config,
                                                                                      interim_results=interim))
    for chunk in chunks:
        yield asr.StreamingRecognizeRequest(audio_content=chunk)


def _collect(stub, talk, speed=2.0, **custom):
    """(kind, response result) in arrival order for one stream of the conversation."""
    config = recognition_config("en-US", **custom)
    events = []
    for response in stub.StreamingRecognize(_streaming_requests(config, _paced(talk.audio, speed)), timeout=60):
        for result in response.results:
            events.append(result)
    return events


def test_conversation_gives_one_final_per_utterance_in_order_with_interims_first(stub, talk):
    events = _collect(stub, talk)
    finals = [e for e in events if e.is_final]
    assert len(finals) == len(TEXTS)
    for final, (start, end) in zip(finals, talk.spans):
        words = final.alternatives[0].words
        # Utterance bounds are in the stream's timeline: the speech span plus at most the 200 ms pad.
        if words:
            assert start - 0.35 <= words[0].start_time / 1000 <= start + 0.1
            assert end - 0.1 <= words[-1].end_time / 1000 <= end + 0.35
        assert final.alternatives[0].language_code == ["en-US"]
        assert final.audio_processed >= end
    # Every utterance has interims before its final; none follows its final.
    position = 0
    for final in finals:
        index = events.index(final)
        interims = [e for e in events[position:index] if not e.is_final]
        assert interims, f"no interim before final {final.alternatives[0].transcript!r}"
        assert all(e.stability in (pytest.approx(0.9), pytest.approx(0.1)) for e in interims)
        position = index + 1
    assert [f.audio_processed for f in finals] == sorted(f.audio_processed for f in finals)


def test_translation_and_both(stub, talk):
    short = conversation(TEXTS[2:])
    results = list(stream(stub, short.audio, recognition_config("en-US"), translate_to="fr", interim_results=False))
    assert len(results) == 1 and results[0].is_final
    assert results[0].alternatives[0][1] == "fr"  # the translation leads, tagged with the target language
    both = list(stream(stub, short.audio, recognition_config("en-US", task="both", target="de"),
                       interim_results=False))
    assert [lang for _, lang in both[0].alternatives] == ["en-US", "de"]  # transcript, then translation


def test_recognize_flac_and_8khz_pcm(stub, talk, tmp_path):
    import soundfile as sf

    path = talk.write_wav(tmp_path / "talk.flac")
    sf.write(path, talk.audio, SAMPLE_RATE, format="FLAC")
    response = stub.Recognize(asr.RecognizeRequest(
        config=asr.RecognitionConfig(encoding=audio.AudioEncoding.FLAC, language_code="en-US"),
        audio=path.read_bytes()), timeout=60)
    assert len(response.results) == len(TEXTS)
    ends = [r.audio_processed for r in response.results]
    assert ends == sorted(ends) and abs(ends[-1] - talk.spans[-1][1]) < 0.4
    import soxr

    pcm8k = (soxr.resample(talk.audio, SAMPLE_RATE, 8000) * 32767).astype("<i2").tobytes()
    response = stub.Recognize(asr.RecognizeRequest(
        config=asr.RecognitionConfig(encoding=audio.AudioEncoding.LINEAR_PCM, sample_rate_hertz=8000), audio=pcm8k),
        timeout=60)
    assert len(response.results) == len(TEXTS)


def test_eight_concurrent_streams_are_batched(server, stub, talk):
    before = server.server.metrics.value("speechlora_batch_size_count")
    before_sum = server.server.metrics.value("speechlora_batch_size_sum")
    outcomes: list = [None] * 8

    def run(i):
        try:
            outcomes[i] = [e for e in _collect(stub, talk, speed=4.0) if e.is_final]
        except Exception as exc:  # surfaced by the assertion below
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(o, list) and len(o) == len(TEXTS) for o in outcomes), outcomes
    batches = server.server.metrics.value("speechlora_batch_size_count") - before
    clips = server.server.metrics.value("speechlora_batch_size_sum") - before_sum
    assert clips / batches > 1.5, "8 streams should share model batches"
    assert server.server.metrics.value("speechlora_active_streams") == 0


def test_config_rpcs_list_models_languages_limits(stub, server):
    config = stub.GetConfig(speech.GetConfigRequest(), timeout=5)
    assert config.models[0].name == "tiny"
    assert set(config.models[0].tasks) == {"transcribe", "translate", "both"}
    assert "fr" in config.models[0].languages
    assert config.limits.max_streams == server.server.options.limits.max_streams
    assert "min_silence_ms" in config.custom_configuration_keys


BAD = [
    ("audio before config", [asr.StreamingRecognizeRequest(audio_content=b"\0\0")], "first message"),
    ("unsupported encoding", [asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
        config=asr.RecognitionConfig(encoding=audio.AudioEncoding.MULAW, sample_rate_hertz=8000)))], "encoding"),
    ("rate", [asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
        config=asr.RecognitionConfig(encoding=audio.AudioEncoding.LINEAR_PCM, sample_rate_hertz=4000)))],
     "sample_rate_hertz"),
    ("odd bytes", [asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
        config=recognition_config())), asr.StreamingRecognizeRequest(audio_content=b"\0\0\0")], "16-bit"),
    ("empty stream", [], "empty stream"),
    ("absurd silence", [asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
        config=recognition_config(min_silence_ms=-5)))], "min_silence_ms"),
    ("unknown key", [asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
        config=asr.RecognitionConfig(encoding=audio.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000,
                                     custom_configuration={"beam": "5"})))], "unknown custom_configuration"),
    ("unknown language", [asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
        config=recognition_config("xx-XX")))], "unknown language"),
    ("config twice", [asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
        config=recognition_config()))] * 2, "only be sent once"),
]


@pytest.mark.parametrize("name,requests,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_invalid_argument_and_server_keeps_serving(stub, server, name, requests, message):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamingRecognize(iter(requests), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details()
    assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING


def test_bad_recognize_and_translation_inputs(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Recognize(asr.RecognizeRequest(config=asr.RecognitionConfig(encoding=audio.AudioEncoding.FLAC),
                                            audio=b"this is not audio at all" * 10), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "decode" in err.value.details()
    first = nmt.StreamingTranslateSpeechToTextRequest(config=nmt.StreamingTranslateSpeechToTextConfig(
        asr_config=asr.StreamingRecognitionConfig(config=recognition_config())))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamingTranslateSpeechToText(iter([first]), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "target_language_code" in err.value.details()


def test_limits_cancellation_and_deadline_free_slots(tiny_model, talk):
    limits = Limits(max_streams=1, max_stream_seconds=2.0, max_chunk_bytes=8000)
    with ServerThread(ServerOptions(port=0, limits=limits), lambda: tiny_model) as srv, \
            grpc.insecure_channel(srv.address) as ch:
        stub = speech_grpc.SpeechStub(ch)
        gate = threading.Event()

        def slow():  # config, one chunk, then hold the stream open until released
            yield asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
                config=recognition_config()))
            yield asr.StreamingRecognizeRequest(audio_content=b"\0\0" * 1600)
            gate.wait(30)

        held = stub.StreamingRecognize(slow())
        _wait_for(lambda: srv.server.metrics.value("speechlora_active_streams") == 1)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.StreamingRecognize(_streaming_requests(recognition_config(), []), timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams=1" in err.value.details()
        held.cancel()  # a client cancel frees the slot at once
        gate.set()
        _wait_for(lambda: srv.server.metrics.value("speechlora_active_streams") == 0)
        # A deadline frees it as well.
        gate.clear()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.StreamingRecognize(slow(), timeout=0.5))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gate.set()
        _wait_for(lambda: srv.server.metrics.value("speechlora_active_streams") == 0)
        # Chunk size and stream duration.
        with pytest.raises(grpc.RpcError) as err:
            list(stub.StreamingRecognize(_streaming_requests(recognition_config(), [b"\0\0" * 4001]), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "8000-byte limit" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.StreamingRecognize(_streaming_requests(recognition_config(), _paced(talk.audio, 1000)),
                                         timeout=30))
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE and "2 s" in err.value.details()
        _wait_for(lambda: srv.server.metrics.value("speechlora_active_streams") == 0)
        # The single slot works again.
        short = conversation(["nine"], lead_s=0.2, tail_s=0.7)
        assert len([e for e in _collect(stub, short, speed=100) if e.is_final]) == 1


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_bearer_token(tiny_model, talk):
    with ServerThread(ServerOptions(port=0, token="s3cret"), lambda: tiny_model) as srv, \
            grpc.insecure_channel(srv.address) as ch:
        stub = speech_grpc.SpeechStub(ch)
        for metadata, message in [((), "missing authorization"), ((("authorization", "Bearer nope"),), "invalid")]:
            with pytest.raises(grpc.RpcError) as err:
                stub.GetConfig(speech.GetConfigRequest(), metadata=metadata, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and message in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                list(stub.StreamingRecognize(_streaming_requests(recognition_config(), []), metadata=metadata,
                                             timeout=5))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", "Bearer s3cret"),)
        assert stub.GetConfig(speech.GetConfigRequest(), metadata=good, timeout=5).models
        finals = [r for r in stream(stub, conversation(TEXTS[2:]).audio, recognition_config(), metadata=good)
                  if r.is_final]
        assert len(finals) == 1
        assert _health(srv.address) == health_pb2.HealthCheckResponse.SERVING  # probes need no token


def test_health_follows_loading_and_drain(tiny_model, talk):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return tiny_model

    srv = ServerThread(ServerOptions(port=0, drain_grace_s=10), slow_load)
    try:
        assert _health(srv.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        with grpc.insecure_channel(srv.address) as ch:
            with pytest.raises(grpc.RpcError) as err:
                list(speech_grpc.SpeechStub(ch).StreamingRecognize(
                    _streaming_requests(recognition_config(), []), timeout=5))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in err.value.details()
        release.set()
        srv.wait_ready()
        assert _health(srv.address) == health_pb2.HealthCheckResponse.SERVING
        assert _health(srv.address, "nvidia.riva.asr.RivaSpeechRecognition") == health_pb2.HealthCheckResponse.SERVING
        # Drain with a stream mid-utterance: health turns NOT_SERVING, the open utterance still gets its final.
        halfway = int(talk.spans[0][0] * SAMPLE_RATE + 0.6 * (talk.spans[0][1] - talk.spans[0][0]) * SAMPLE_RATE)
        gate = threading.Event()

        def half_then_hold():
            yield asr.StreamingRecognizeRequest(streaming_config=asr.StreamingRecognitionConfig(
                config=recognition_config(), interim_results=False))
            yield from (asr.StreamingRecognizeRequest(audio_content=c) for c in _paced(talk.audio[:halfway], 50))
            gate.wait(30)

        with grpc.insecure_channel(srv.address) as ch:
            call = speech_grpc.SpeechStub(ch).StreamingRecognize(half_then_hold(), timeout=30)
            _wait_for(lambda: srv.server.backend.open_streams == 1)
            time.sleep(0.3)
            stopping = threading.Thread(target=srv.stop, kwargs={"grace": 10})
            stopping.start()
            _wait_for(lambda: srv.server.backend.draining)
            assert _health(srv.address) == health_pb2.HealthCheckResponse.NOT_SERVING
            finals = [r for resp in call for r in resp.results if r.is_final]
            assert call.code() == grpc.StatusCode.OK
            assert len(finals) == 1 and finals[0].alternatives[0].words[0].start_time / 1000 < talk.spans[0][0]
            gate.set()
            stopping.join(20)
    finally:
        release.set()
        gate_set = locals().get("gate")
        if gate_set is not None:
            gate_set.set()
        srv.stop()


def test_reflection_lists_our_and_rivas_services(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as ch:
        responses = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"speechlora.v1.Speech", "nvidia.riva.asr.RivaSpeechRecognition", "nvidia.riva.nmt.RivaTranslation",
            "grpc.health.v1.Health"} <= names


def test_metrics_over_http(tiny_model, talk):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ServerThread(ServerOptions(port=0, metrics_port=port), lambda: tiny_model) as srv, \
            grpc.insecure_channel(srv.address) as ch:
        list(stream(speech_grpc.SpeechStub(ch), conversation(TEXTS[2:]).audio, recognition_config(),
                    realtime=False))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in ("speechlora_requests_total", "speechlora_active_streams", "speechlora_rtfx",
                 "speechlora_queue_depth", "speechlora_time_to_first_partial_seconds",
                 "speechlora_time_to_final_seconds_count"):
        assert name in text
    assert 'speechlora_requests_total{code="OK",method="StreamingRecognize"} 1.0' in text


def test_tls(tiny_model, tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    with ServerThread(ServerOptions(port=0, tls_cert=cert, tls_key=key), lambda: tiny_model) as srv:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{srv.port}", creds) as ch:
            assert speech_grpc.SpeechStub(ch).GetConfig(speech.GetConfigRequest(), timeout=10).models
        with grpc.insecure_channel(srv.address) as ch, pytest.raises(grpc.RpcError):
            speech_grpc.SpeechStub(ch).GetConfig(speech.GetConfigRequest(), timeout=3)


def test_stream_cli_prints_interims_and_finals(server, talk, tmp_path, capsys):
    from speech.cli import main

    wav = talk.write_wav(tmp_path / "talk.wav", rate=22050)
    assert main(["stream", str(wav), "--server", server.address]) == 0
    out = capsys.readouterr().out.splitlines()
    finals = [line for line in out if line.startswith("[")]
    assert len(finals) == len(TEXTS)
    assert main(["stream", str(tmp_path / "missing.wav"), "--server", server.address]) == 2
    assert "no such file" in capsys.readouterr().err


def test_builtin_model_transcribes_words(talk):
    """Through the real server, VAD-cut utterances of a training voice (en-us): measured WER ~0.3."""
    from speech.model import SpeechModel, builtin_path

    if not (builtin_path() / "config.json").exists():
        pytest.skip("the built-in model (speech/builtin/) is not installed yet; text needs real weights")
    from jiwer import wer

    model = SpeechModel.load()
    with ServerThread(ServerOptions(port=0), lambda: model) as srv, grpc.insecure_channel(srv.address) as ch:
        finals = [r.text for r in stream(speech_grpc.SpeechStub(ch), talk.audio, recognition_config()) if r.is_final]
    assert len(finals) == len(TEXTS)
    assert wer(TEXTS, [f.lower().strip(".!?,") for f in finals]) < 0.5
