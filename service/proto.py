"""The generated gRPC modules, compiled on first import when a source checkout lacks them.

Wheels and `pip install -e .` get service/_proto/ from setup.py's build hook; a fresh clone run
in place (or one whose protos/ changed since) is compiled here, once, under a file lock.

    from service.proto import asr, audio, nmt, speech, speech_grpc, asr_grpc, nmt_grpc
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import tempfile
from pathlib import Path

from service import protogen

_HERE = Path(__file__).resolve().parent
_OUT = _HERE / "_proto"
_PROTOS = _HERE.parent / "protos"  # present in a source checkout, absent in a wheel


def _ensure_generated() -> None:
    if not _PROTOS.is_dir():
        if not (_OUT / protogen.STAMP).is_file():
            raise ImportError(
                "service/_proto is missing and there is no protos/ folder to compile it from; "
                "reinstall speechlora"
            )
        return
    if protogen.is_fresh(_PROTOS, _OUT):
        return
    lock_name = "speechlora-protogen-" + hashlib.sha1(str(_OUT).encode()).hexdigest()[:12] + ".lock"
    with open(Path(tempfile.gettempdir()) / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not protogen.is_fresh(_PROTOS, _OUT):
            protogen.compile_protos(_PROTOS, _OUT)
    importlib.invalidate_caches()


_ensure_generated()

audio = importlib.import_module("service._proto.riva.proto.riva_audio_pb2")
asr = importlib.import_module("service._proto.riva.proto.riva_asr_pb2")
asr_grpc = importlib.import_module("service._proto.riva.proto.riva_asr_pb2_grpc")
nmt = importlib.import_module("service._proto.riva.proto.riva_nmt_pb2")
nmt_grpc = importlib.import_module("service._proto.riva.proto.riva_nmt_pb2_grpc")
speech = importlib.import_module("service._proto.speechlora.v1.speech_pb2")
speech_grpc = importlib.import_module("service._proto.speechlora.v1.speech_pb2_grpc")

SERVICE_NAMES = (
    speech.DESCRIPTOR.services_by_name["Speech"].full_name,
    asr.DESCRIPTOR.services_by_name["RivaSpeechRecognition"].full_name,
    nmt.DESCRIPTOR.services_by_name["RivaTranslation"].full_name,
)
