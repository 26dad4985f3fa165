"""speech.builtin_recipe.grow: a deeper encoder that starts out hearing as the original does."""

from __future__ import annotations

import json

import pytest
import torch

from speech.builtin_recipe.grow import grow
from speech.model import SpeechModel, builtin_path


def test_grown_encoder_starts_as_the_original(tmp_path, speech_clips):
    source = builtin_path()
    out = tmp_path / "grown"
    assert grow(source, out, 2) == json.loads((source / "config.json").read_text())["audio_config"]["num_blocks"] + 2
    original, grown = SpeechModel.load(source), SpeechModel.load(out)
    assert len(grown.encoder.encoders) == len(original.encoder.encoders) + 2
    with torch.inference_mode():
        features, lengths = original.features(speech_clips[:2])
        before, n = original.encoder(features, lengths)
        after, m = grown.encoder(features, lengths)
    assert torch.equal(n, m)
    for row, frames in enumerate(n.tolist()):  # every real frame points the same way as before
        cos = torch.nn.functional.cosine_similarity(before[row, :frames], after[row, :frames], dim=-1)
        assert cos.min() > 0.999
    # The new blocks are trainable copies, not the same tensors: their zeroed branches are zero.
    last = grown.encoder.encoders[-1]
    assert not last.self_attn.o_proj.weight.any() and last.layer_norm.weight.eq(1).all()


def test_grow_refuses_nothing_to_add(tmp_path):
    with pytest.raises(SystemExit, match="--add"):
        grow(builtin_path(), tmp_path / "x", 0)
    with pytest.raises(SystemExit, match="--add"):
        grow(builtin_path(), tmp_path / "x", -1, float32=True)


def test_grow_refuses_to_overwrite_its_source(tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(builtin_path(), folder)
    with pytest.raises(SystemExit, match="--out"):
        grow(folder, folder, 2)
    assert (folder / "model.safetensors").is_file()


@pytest.mark.parametrize("add", [1, 0])
def test_grow_float32_upcasts_the_shipped_fp16_package_unchanged(tmp_path, add):
    """--float32: training goes on from the shipped fp16 weights in fp32, values unchanged
    (--add 0: only that, the working copy a new round of training starts from)."""
    from safetensors.torch import load_file

    source = builtin_path()
    out = tmp_path / "grown32"
    blocks = json.loads((source / "config.json").read_text())["audio_config"]["num_blocks"]
    assert grow(source, out, add, float32=True) == blocks + add
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["audio_config"]["num_blocks"] == blocks + add
    for name in ["model.safetensors", "speech-lora/adapter_model.safetensors"]:
        before, after = load_file(str(source / name)), load_file(str(out / name))
        assert before.keys() <= after.keys()
        for key, tensor in before.items():
            if tensor.is_floating_point():
                assert after[key].dtype == torch.float32 and torch.equal(after[key], tensor.float()), key
