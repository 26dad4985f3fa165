"""The conformer matches transformers' on unpadded input and is padding-correct in a batch."""

import torch
from transformers import Phi4MultimodalAudioConfig
from transformers.models.phi4_multimodal.modeling_phi4_multimodal import Phi4MultimodalAudioModel

from encoder.conformer import ConformerEncoder

CONFIG = dict(hidden_size=64, intermediate_size=96, num_blocks=2, num_attention_heads=4, ext_pw_out_channel=64,
              depthwise_separable_out_channel=64, nemo_conv_channels=32, bias_max_distance=50)


def _pair():
    torch.manual_seed(0)
    reference = Phi4MultimodalAudioModel(Phi4MultimodalAudioConfig(**CONFIG)).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.1)
        reference.encoder_embedding.global_mean.normal_(5, 1)
        reference.encoder_embedding.global_invstd.uniform_(0.2, 0.4)
    ours = ConformerEncoder(Phi4MultimodalAudioConfig(**CONFIG)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # same weight names as the native checkpoint
    return reference, ours


@torch.no_grad()
def test_matches_transformers_unpadded():
    reference, ours = _pair()
    # 8000 frames -> exactly two 500-token chunks. (For other lengths over 500 tokens the reference
    # also attends to the zero padding of its last chunk; ours masks it, as in a batch.)
    for frames in (97, 333, 8000):
        x = torch.randn(1, frames, 80) * 3 + 8
        expected = reference(x, None)
        got, lengths = ours(x, torch.tensor([frames]))
        assert got.shape == expected.shape and int(lengths[0]) == expected.shape[1]
        assert torch.max(torch.abs(got - expected)).item() <= 1e-5


@torch.no_grad()
def test_batched_equals_single():
    _, ours = _pair()
    lengths = [97, 333, 250, 4100]
    clips = [torch.randn(1, n, 80) * 3 + 8 for n in lengths]
    batch = torch.zeros(len(clips), max(lengths), 80)
    for i, c in enumerate(clips):
        batch[i, : c.shape[1]] = c
    out, out_lengths = ours(batch, torch.tensor(lengths))
    for i, c in enumerate(clips):
        alone, n = ours(c, torch.tensor([c.shape[1]]))
        assert int(out_lengths[i]) == int(n[0])
        assert torch.max(torch.abs(out[i, : n[0]] - alone[0])).item() <= 1e-4


@torch.no_grad()
def test_reference_encoder_is_not_padding_correct():
    """Documents why we own the mask: transformers' encoder lets padding leak into valid frames."""
    reference, _ = _pair()
    x = torch.randn(1, 200, 80) * 3 + 8
    padded = torch.cat([x, torch.zeros(1, 300, 80)], dim=1)
    mask = torch.arange(500)[None] < 200
    alone = reference(x, None)
    batched = reference(padded, mask)[:, : alone.shape[1]]
    assert torch.max(torch.abs(alone - batched)).item() > 1e-3


def test_training_path_equals_inference_path():
    """With autograd on, padding is masked by a multiply (in place is not allowed); same values."""
    _, ours = _pair()
    lengths = torch.tensor([97, 333, 250])
    batch = torch.randn(3, 333, 80) * 3 + 8
    with torch.no_grad():
        fast, _ = ours(batch, lengths)
    slow, _ = ours(batch.requires_grad_(), lengths)
    assert slow.requires_grad
    for i, n in enumerate(ConformerEncoder.output_lengths(lengths).tolist()):
        assert torch.max(torch.abs(fast[i, :n] - slow[i, :n].detach())).item() <= 1e-5
