"""Shared fixtures: real speech from espeak-ng, real tiny checkpoint folders in both layouts."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

warnings.filterwarnings("ignore", category=FutureWarning)

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "please leave your message after the tone",
    "speech recognition turns sound into words",
]


def espeak(text: str, path: Path, voice: str = "en", speed: int = 160, rate: int | None = None) -> Path:
    """Synthesize `text` to a wav file with espeak-ng (22.05 kHz unless resampled with sox)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng; setup.sh installs it)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    if rate:
        tmp = path.with_suffix(".tmp.wav")
        path.rename(tmp)
        subprocess.run(["sox", str(tmp), "-r", str(rate), str(path)], check=True)
        tmp.unlink()
    return path


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speech")
    for i, text in enumerate(SENTENCES):
        espeak(text, root / f"s{i}.wav")
    return root


@pytest.fixture(scope="session")
def speech_clips(speech_dir) -> list[np.ndarray]:
    from encoder.audio import load_audio

    return [load_audio(speech_dir / f"s{i}.wav") for i in range(len(SENTENCES))]


@pytest.fixture(scope="session")
def tiny_native(tmp_path_factory) -> Path:
    from speech.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "native", layout="native", seed=0)


@pytest.fixture(scope="session")
def tiny_remote(tmp_path_factory) -> Path:
    from speech.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "remote", layout="remote", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_native):
    from speech.model import SpeechModel

    return SpeechModel.load(tiny_native)
