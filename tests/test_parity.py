"""Same tiny weights, same answers: our model vs transformers' Phi4MultimodalForCausalLM.

Tolerances: logits within 1e-4 (float32; observed ~1e-6), decoded tokens identical.
"""

import pytest
import torch

from speech.decoding import greedy_decode
from speech.model import SpeechModel
from speech.prompts import Task


@pytest.fixture(scope="module")
def reference(tiny_native):
    from transformers import Phi4MultimodalForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = Phi4MultimodalForCausalLM.from_pretrained(str(tiny_native), dtype=torch.float32).eval()
    model.load_adapter(str(tiny_native / "speech-lora"), adapter_name="speech")
    model.set_adapter("speech")
    return model


def _inputs(model: SpeechModel, clip, task=Task()):
    from transformers import Phi4MultimodalFeatureExtractor

    feats = Phi4MultimodalFeatureExtractor()([clip], sampling_rate=16000, return_tensors="pt")
    ids = torch.tensor([model.prompt_ids(task, int(feats["audio_embed_sizes"][0]))])
    return ids, feats


@torch.no_grad()
def test_logits_match_transformers(reference, tiny_model, speech_clips):
    for clip in speech_clips[:2]:
        ids, feats = _inputs(tiny_model, clip)
        expected = reference(input_ids=ids, audio_input_features=feats["audio_input_features"],
                             audio_embed_sizes=feats["audio_embed_sizes"]).logits
        features, lengths = tiny_model.features([clip])
        got = tiny_model(ids, torch.ones_like(ids), features, lengths).logits
        assert torch.max(torch.abs(got - expected)).item() <= 1e-4


@torch.no_grad()
def test_decoded_tokens_match_generate(reference, tiny_model, speech_clips):
    for task in (Task(), Task("translate", "fr")):
        clip = speech_clips[1]
        ids, feats = _inputs(tiny_model, clip, task)
        expected = reference.generate(
            input_ids=ids, audio_input_features=feats["audio_input_features"],
            audio_embed_sizes=feats["audio_embed_sizes"], max_new_tokens=24, do_sample=False, suppress_tokens=tiny_model.suppress_token_ids,
            eos_token_id=tiny_model.stop_token_ids, pad_token_id=tiny_model.stop_token_ids[-1],
        )[0, ids.shape[1]:].tolist()
        expected = [t for t in expected if t not in tiny_model.stop_token_ids]
        features, lengths = tiny_model.features([clip])
        embeds = tiny_model.embed(ids, features, lengths)
        got = greedy_decode(tiny_model.lm, embeds, torch.ones_like(ids), tiny_model.stop_token_ids, [24],
                            tiny_model.suppress_token_ids)[0]
        assert len(set(got)) > 3, "tiny weights should decode varied tokens, or this test proves little"
        assert got == expected


def test_batched_equals_single_text(tiny_model, speech_clips):
    batched = tiny_model.generate(speech_clips, max_new_tokens=24)
    single = [tiny_model.generate([clip], max_new_tokens=24)[0] for clip in speech_clips]
    assert batched == single
    assert len(set(batched)) == len(batched)  # different audio, different text


@torch.no_grad()
def test_batched_equals_single_encoder(tiny_model, speech_clips):
    features, lengths = tiny_model.features(speech_clips)
    states, out_lengths = tiny_model.encoder(features, lengths)
    for i, clip in enumerate(speech_clips):
        f, l = tiny_model.features([clip])
        alone, _ = tiny_model.encoder(f, l)
        assert torch.max(torch.abs(states[i, : out_lengths[i]] - alone[0])).item() <= 1e-4


@torch.no_grad()
def test_longrope_checkpoint_matches_transformers(tmp_path, speech_clips):
    """The real checkpoint's RoPE (longrope, per-frequency short/long factors) survives our
    config reading: same logits as transformers on a checkpoint that has it."""
    from transformers import Phi4MultimodalForCausalLM

    from speech.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path / "longrope", "native", seed=1, longrope=True)
    ours = SpeechModel.load(folder)
    assert ours.lm.config.rope_parameters["rope_type"] == "longrope"
    reference = Phi4MultimodalForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    reference.load_adapter(str(folder / "speech-lora"), adapter_name="speech")
    reference.set_adapter("speech")
    ids, feats = _inputs(ours, speech_clips[0])
    expected = reference(input_ids=ids, audio_input_features=feats["audio_input_features"],
                         audio_embed_sizes=feats["audio_embed_sizes"]).logits
    features, lengths = ours.features([speech_clips[0]])
    got = ours(ids, torch.ones_like(ids), features, lengths).logits
    assert torch.max(torch.abs(got - expected)).item() <= 1e-4
    default = SpeechModel.load(write_tiny_checkpoint(tmp_path / "default", "native", seed=1))
    assert torch.max(torch.abs(default(ids, torch.ones_like(ids), features, lengths).logits - got)).item() > 1e-3
