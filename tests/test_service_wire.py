"""Wire compatibility: our compiled protos are Riva's byte for byte, the build compiles them from
protos/, and the unmodified nvidia-riva-client streams a file to our server. Plus the endpointer
on real speech, and stability splitting."""

from __future__ import annotations

import io
import shutil

import grpc
import pytest
from service_support import conversation

from encoder.vad import VadOptions, speech_segments
from service import protogen
from service.config import ServerOptions
from service.endpointing import Endpointer
from service.server import ServerThread
from service.session import stable_split

riva_client = pytest.importorskip("riva.client", reason="nvidia-riva-client is a dev dependency")

TEXTS = ["the quick brown fox jumps over the lazy dog", "please leave your message after the tone",
         "seven eight nine"]


def test_compiled_protos_are_rivas_byte_for_byte():
    from riva.client.proto import riva_asr_pb2, riva_audio_pb2, riva_common_pb2, riva_nmt_pb2, riva_tts_pb2

    from service import proto

    ours = {m.DESCRIPTOR.name: m.DESCRIPTOR.serialized_pb for m in (proto.asr, proto.audio, proto.nmt)}
    theirs = {m.DESCRIPTOR.name: m.DESCRIPTOR.serialized_pb
              for m in (riva_asr_pb2, riva_audio_pb2, riva_nmt_pb2, riva_common_pb2, riva_tts_pb2)}
    for name, serialized in ours.items():
        assert serialized == theirs[name], f"{name} differs from nvidia-riva-client's"
    # Identical descriptors are one descriptor: the two packages' messages interoperate in one process.
    assert proto.asr.RecognitionConfig.DESCRIPTOR is riva_asr_pb2.RecognitionConfig.DESCRIPTOR


def test_protos_compile_from_a_fresh_checkout_and_go_stale_on_change(tmp_path):
    root = protogen.__file__.rsplit("/service/", 1)[0]
    protos = tmp_path / "protos"
    shutil.copytree(f"{root}/protos", protos)
    out = tmp_path / "gen"
    assert not protogen.is_fresh(protos, out)
    protogen.compile_protos(protos, out)
    assert protogen.is_fresh(protos, out)
    generated = (out / "speechlora" / "v1" / "speech_pb2_grpc.py").read_text()
    assert "from service._proto.riva.proto import riva_asr_pb2" in generated  # never shadows riva's `riva`
    (protos / "speechlora" / "v1" / "speech.proto").write_text(
        (protos / "speechlora" / "v1" / "speech.proto").read_text() + "\n// changed\n")
    assert not protogen.is_fresh(protos, out)


def test_endpointer_matches_the_speech_it_was_given():
    talk = conversation(TEXTS)
    options = VadOptions()
    endpointer = Endpointer(options)
    closed = []
    for offset in range(0, len(talk.audio), 1234):  # odd chunk sizes: frames straddle chunks
        closed += endpointer.push(talk.audio[offset:offset + 1234])
    closed += endpointer.flush()
    assert [u.index for u in closed] == [0, 1, 2]
    assert all(u.reason == "silence" for u in closed)
    for utterance, (start, end) in zip(closed, talk.spans):
        assert start - 0.35 <= utterance.start_s <= start + 0.1
        assert end - 0.1 <= utterance.end_s <= end + 0.35
    # The streaming cut agrees with the offline one on the same audio (within one frame).
    offline = speech_segments(talk.audio, options)
    assert len(offline) == len(closed)
    for (s, e), u in zip(offline, closed):
        assert abs(s - u.start) <= 480 * 2 and abs(e - u.end) <= 480 * 2


def test_endpointer_cuts_long_speech_and_drops_clicks():
    import numpy as np

    long_talk = conversation([" ".join(TEXTS)], tail_s=0.1)
    closed = []
    endpointer = Endpointer(VadOptions(max_speech_s=2.0))
    for offset in range(0, len(long_talk.audio), 1600):
        closed += endpointer.push(long_talk.audio[offset:offset + 1600])
    closed += endpointer.flush()
    assert len(closed) >= 3 and all(u.end - u.start <= 2.0 * 16000 for u in closed)
    assert [u.reason for u in closed[:-1]] == ["max_length"] * (len(closed) - 1)
    assert [u.start for u in closed[1:]] == [u.end for u in closed[:-1]]  # cut, not dropped: no gaps
    click = np.zeros(16000, np.float32)
    click[8000:8000 + 480] = np.random.default_rng(0).standard_normal(480).astype(np.float32) * 0.5
    endpointer = Endpointer(VadOptions())
    assert endpointer.push(click) + endpointer.flush() == []


def test_stable_split():
    assert stable_split([], ["a", "b"]) == ("", "a b")
    assert stable_split(["a", "b", "c"], ["a", "b", "x", "y"]) == ("a b", " x y")
    assert stable_split(["a"], ["a"]) == ("a", "")


@pytest.fixture(scope="module")
def riva_server(tiny_model):
    with ServerThread(ServerOptions(port=0, token="t0ken"), lambda: tiny_model, model_name="tiny") as srv:
        yield srv


def test_unmodified_riva_client_streams_a_file(riva_server, tmp_path):
    talk = conversation(TEXTS)
    wav = talk.write_wav(tmp_path / "talk.wav", rate=22050)
    auth = riva_client.Auth(uri=riva_server.address, metadata_args=[["authorization", "Bearer t0ken"]])
    asr = riva_client.ASRService(auth)
    config = riva_client.StreamingRecognitionConfig(
        config=riva_client.RecognitionConfig(encoding=riva_client.AudioEncoding.LINEAR_PCM, language_code="en-US",
                                             max_alternatives=1, enable_word_time_offsets=True),
        interim_results=True)
    riva_client.add_audio_file_specs_to_config(config, wav)
    with riva_client.AudioChunkFileIterator(str(wav), 2205) as chunks:
        responses = list(asr.streaming_response_generator(audio_chunks=chunks, streaming_config=config))
    finals = [r for resp in responses for r in resp.results if r.is_final]
    assert len(finals) == len(TEXTS)
    out = io.StringIO()
    riva_client.print_streaming(iter(responses), output_file=[out], additional_info="time", word_time_offsets=True)
    assert out.getvalue().count("Transcript 0:") == len(TEXTS)

    # Offline Recognize and the config RPC through the same client.
    response = asr.offline_recognize(wav.read_bytes(), riva_client.RecognitionConfig(
        encoding=riva_client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=22050, language_code="en-US"))
    assert len(response.results) >= 1  # the wav header is read as a few samples of PCM: harmless
    config_response = asr.stub.GetRivaSpeechRecognitionConfig(
        riva_client.proto.riva_asr_pb2.RivaSpeechRecognitionConfigRequest(), metadata=auth.get_auth_metadata())
    assert config_response.model_config[0].model_name == "tiny"

    # Speech-to-text translation through Riva's NMT client.
    nmt = riva_client.NeuralMachineTranslationClient(auth)
    s2t = riva_client.StreamingTranslateSpeechToTextConfig(
        asr_config=config, translation_config=riva_client.TranslationConfig(source_language_code="en-US",
                                                                            target_language_code="fr"))
    with riva_client.AudioChunkFileIterator(str(wav), 4410) as chunks:
        finals = [r for resp in nmt.streaming_s2t_response_generator(chunks, s2t) for r in resp.results if r.is_final]
    assert len(finals) == len(TEXTS) and finals[0].alternatives[0].language_code == ["fr"]

    # Without the token the same client is refused.
    bare = riva_client.ASRService(riva_client.Auth(uri=riva_server.address))
    with pytest.raises(grpc.RpcError) as err:
        bare.offline_recognize(b"\0\0" * 1600, riva_client.RecognitionConfig(
            encoding=riva_client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
