"""Our batched log-mel features equal transformers' Phi4MultimodalFeatureExtractor on real speech."""

import numpy as np
import pytest
import torch

from encoder.features import LogMelFeatures, num_audio_tokens, num_frames


def test_features_match_transformers_extractor(speech_clips):
    from transformers import Phi4MultimodalFeatureExtractor

    reference = Phi4MultimodalFeatureExtractor()
    ours, lengths = LogMelFeatures()(speech_clips)
    for i, clip in enumerate(speech_clips):
        expected = reference([clip], sampling_rate=16000, return_tensors="pt")
        ref = expected["audio_input_features"][0]
        assert int(lengths[i]) == ref.shape[0]
        assert torch.max(torch.abs(ours[i, : lengths[i]] - ref)).item() <= 1e-3
        assert int(expected["audio_embed_sizes"][0]) == num_audio_tokens(len(clip))
        # padding frames of shorter clips are zero, not leftover audio
        assert torch.count_nonzero(ours[i, lengths[i]:]) == 0


def test_token_count_formula():
    # ceil(((N - 400) // 160 + 1) / 8): 12.5 tokens per second
    assert num_frames(16000) == 98
    assert num_audio_tokens(16000) == 13
    assert num_audio_tokens(16000 * 30) == 375


def test_too_short_clip_is_refused():
    with pytest.raises(ValueError):
        LogMelFeatures()([np.zeros(100, dtype=np.float32)])
