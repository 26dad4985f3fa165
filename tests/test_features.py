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


def test_vtlp_moves_formants_and_keeps_the_reference_at_one():
    """VTLP (training augmentation): alpha 1 is the reference; alpha > 1 moves a tone's energy up."""
    from encoder.features import LogMelFeatures, vtlp_filters

    features = LogMelFeatures()
    assert torch.equal(vtlp_filters(features.mel, 1.0), features.mel)
    t = np.arange(16_000) / 16_000
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    plain, _ = features([tone])
    warped, _ = features([tone, tone, tone], warp=[0.9, 1.0, 1.1])
    assert torch.allclose(warped[1], plain[0], atol=1e-4)
    peaks = [int(warped[i].mean(0).argmax()) for i in range(3)]
    assert peaks[0] < peaks[1] < peaks[2]
    # the band still ends at Nyquist: the top filters keep energy for alpha < 1 and > 1
    for alpha in (0.85, 1.15):
        assert float(vtlp_filters(features.mel, alpha)[:, -1].sum()) > 0
    with pytest.raises(ValueError):
        features([tone, tone], warp=[1.0])
