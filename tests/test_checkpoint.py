"""Both on-disk layouts load from real folders; broken folders give one clear CheckpointError."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speech.checkpoint import read_spec, safetensors_files
from speech.errors import CheckpointError
from speech.model import SpeechModel
from speech.prompts import Task

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "phi4mm-remote-config"


def test_layouts_detected(tiny_native, tiny_remote):
    assert read_spec(tiny_native).layout == "native"
    remote = read_spec(tiny_remote)
    assert remote.layout == "remote"
    assert (tiny_remote / "model.safetensors.index.json").exists()  # sharded with an index
    assert len(safetensors_files(tiny_remote)) == 2


@torch.no_grad()
def test_native_and_remote_give_identical_logits(tiny_native, tiny_remote, speech_clips):
    native = SpeechModel.load(tiny_native)
    remote = SpeechModel.load(tiny_remote)
    clip = speech_clips[0]
    features, lengths = native.features([clip])
    n = int(native.encoder.output_lengths(lengths)[0])
    ids = torch.tensor([native.prompt_ids(Task(), n)])
    a = native(ids, torch.ones_like(ids), features, lengths).logits
    b = remote(ids, torch.ones_like(ids), features, lengths).logits
    assert torch.equal(a, b)
    assert native.generate([clip]) == remote.generate([clip])


@torch.no_grad()
def test_speech_lora_is_applied(tiny_native, speech_clips, tmp_path):
    """Removing speech-lora/ must change the logits: the LoRA is really in the forward pass."""
    copy = tmp_path / "nolora"
    shutil.copytree(tiny_native, copy)
    shutil.rmtree(copy / "speech-lora")
    with_lora, without = SpeechModel.load(tiny_native), SpeechModel.load(copy)
    features, lengths = with_lora.features([speech_clips[0]])
    n = int(with_lora.encoder.output_lengths(lengths)[0])
    ids = torch.tensor([with_lora.prompt_ids(Task(), n)])
    a = with_lora(ids, torch.ones_like(ids), features, lengths).logits
    b = without(ids, torch.ones_like(ids), features, lengths).logits
    assert torch.max(torch.abs(a - b)).item() > 1e-3


def test_info_counts_for_real_config():
    if not FIXTURE.exists():
        pytest.skip(f"fixture {FIXTURE} not present")
    out = subprocess.run([sys.executable, "-m", "speech.cli", "info", "--model", str(FIXTURE)],
                         capture_output=True, text=True, check=True).stdout
    assert "layout: remote" in out
    assert "speech LoRA: 461,373,440" in out
    assert "encoder: 441,238,144" in out
    assert "speech projector: 12,589,056" in out
    assert "LM: 3,836,021,760" in out
    assert "decoding: greedy (LM)" in out  # the real checkpoint has no CTC head


def test_info_says_how_the_builtin_model_decodes():
    from speech.model import builtin_path

    if not (builtin_path() / "ctc_head.safetensors").exists():
        pytest.skip("the built-in model is not in this checkout")
    out = subprocess.run([sys.executable, "-m", "speech.cli", "info"], capture_output=True, text=True,
                         check=True).stdout
    assert "decoding: CTC rescoring (weight" in out and "word n-gram ngram.npz" in out


def _broken(tiny_native, tmp_path, how):
    root = tmp_path / how
    shutil.copytree(tiny_native, root)
    weights = root / "model.safetensors"
    if how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif how == "pickle":
        weights.rename(root / "pytorch_model.bin")
    elif how == "wrong-type":
        cfg = json.loads((root / "config.json").read_text())
        cfg["model_type"] = "llama"
        (root / "config.json").write_text(json.dumps(cfg))
    elif how == "no-config":
        (root / "config.json").unlink()
    elif how == "bad-json":
        (root / "config.json").write_text("{not json")
    return root


@pytest.mark.parametrize("how,message", [
    ("truncated", "damaged safetensors"),
    ("pickle", "only pickle weights"),
    ("wrong-type", "model_type 'llama'"),
    ("no-config", "no config.json"),
    ("bad-json", "not valid json"),
])
def test_broken_folders_are_refused(tiny_native, tmp_path, how, message):
    with pytest.raises(CheckpointError, match=message):
        SpeechModel.load(_broken(tiny_native, tmp_path, how))


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        SpeechModel.load(tmp_path / "nope")
