"""The CUDA paths on a real GPU: bf16 weights, SDPA (or flash-attention 2), the token-tree scoring
under a 4D mask, serving and fine-tuning. Skipped where there is no GPU (CI, laptops).

Real users run the real checkpoint on GPUs; CI has none, so these run by hand on a GPU machine
(`bash bench/gpu_check.sh`, which records what it ran). That machine has no espeak-ng, so the
speech comes from files made here by the same espeak-ng calls as the CPU tests:
`python tests/test_cuda.py --prepare DIR` writes them, SPEECHLORA_TEST_SPEECH=DIR reads them.

What each test proves:
- the built-in model loads on CUDA in bf16 and transcribes as well as on CPU in fp32;
- its scores of candidate transcripts through the token tree (SDPA, 4D additive mask) equal the
  per-candidate path, in bf16 on the GPU;
- our model and transformers' Phi4MultimodalForCausalLM agree on CUDA: fp32 logits and greedy
  tokens on the tiny checkpoint, and at the real checkpoint's shapes (encoder 24 x 1024, LM hidden
  3072 with 24/8 heads of 128, LoRA r 320, longrope) in bf16, with batched == single;
- a gRPC server with the model on the GPU streams finals;
- `speechlora finetune` trains in bf16 autocast with gradient checkpointing, and its adapter loads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch

SENTENCES = [
    "please leave your message after the tone",
    "the weather will be warm and sunny tomorrow",
    "thank you for calling please hold the line",
    "the quick brown fox jumps over the lazy dog",
]
VOICE = ("en-us+m3", 160)
CACHE_ENV = "SPEECHLORA_TEST_SPEECH"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (run bench/gpu_check.sh on one)")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _synthesize(text: str, path: Path) -> Path:
    subprocess.run(["espeak-ng", "-v", VOICE[0], "-s", str(VOICE[1]), "-w", str(path), text], check=True)
    return path


def speech_file(text: str, tmp: Path) -> Path:
    """A wav of `text`: from SPEECHLORA_TEST_SPEECH when set (the GPU machine), else espeak-ng."""
    cache = os.environ.get(CACHE_ENV)
    if cache:
        path = Path(cache).resolve() / f"{_slug(text)}.wav"
        if not path.exists():
            pytest.fail(f"{path} is missing: run `python tests/test_cuda.py --prepare {cache}` where espeak-ng is")
        return path
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip(f"espeak-ng is not installed and {CACHE_ENV} is not set")
    return _synthesize(text, tmp / f"{_slug(text)}.wav")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[np.ndarray]:
    from encoder.audio import load_audio

    tmp = tmp_path_factory.mktemp("cuda_speech")
    return [load_audio(speech_file(text, tmp)) for text in SENTENCES]


def _wer(hyps: list[str], refs: list[str] = SENTENCES) -> float:
    return jiwer.wer(refs, [re.sub(r"[^a-z' ]", "", h.lower()).strip() for h in hyps])


@pytest.fixture(scope="module")
def builtin_cuda():
    from speech.model import SpeechModel

    return SpeechModel.load(device="cuda")


# ---- the built-in model -----------------------------------------------------------------------

def test_builtin_on_cuda_is_bf16_and_hears_like_cpu(builtin_cuda, clips):
    from speech.model import SpeechModel

    info = builtin_cuda.describe()
    assert info["device"].startswith("cuda") and builtin_cuda.dtype == torch.bfloat16
    assert builtin_cuda.lm.config._attn_implementation in ("sdpa", "flash_attention_2")
    on_gpu = builtin_cuda.generate(clips)
    on_cpu = SpeechModel.load(device="cpu").generate(clips)
    print("cuda:", on_gpu, "\ncpu: ", on_cpu)
    # bf16 moves scores by ~1e-2, which can flip a close call between candidates; not more.
    assert _wer(on_gpu) <= _wer(on_cpu) + 0.1, (on_gpu, on_cpu)
    assert _wer(on_gpu) <= 0.5
    # the LM alone (no CTC rescoring) and CTC + n-gram alone (no LM pass) run on the GPU too
    saved = builtin_cuda.ctc_weight
    try:
        for weight in (0.0, 1.0):
            builtin_cuda.ctc_weight = weight
            assert all(builtin_cuda.generate(clips[:2])), weight
    finally:
        builtin_cuda.ctc_weight = saved


def test_tree_scores_equal_flat_scores_in_bf16(builtin_cuda, clips):
    """Candidate transcripts sharing prefixes go in as one token tree (SDPA with a 4D mask); on
    the GPU in bf16 its log-probs must match scoring each candidate alone (the flash path)."""
    from speech.prompts import Task

    model = builtin_cuda
    features, frames = model.features(clips[:2])
    n_audio = model.encoder.output_lengths(frames).tolist()
    ids, mask = model._left_pad([model.prompt_ids(Task(), n) for n in n_audio])
    with torch.inference_mode():
        states, lengths = model.encoder(features.to(model.dtype), frames)
        embeds = model._embed_states(ids, states, lengths)
        answers = ["Please leave your message.", "", "The weather will be warm", "The weather will be cold",
                   "The", "The weather will be warm and dry"]
        owners = [0, 0, 1, 1, 1, 1]
        prefill = model._prefill(embeds, mask)
        tree = model._answer_log_probs(prefill, owners, answers)
        stop = model.stop_token_ids[0]
        flat = model._flat_log_probs(prefill, owners,
                                     [model.tokenizer.encode(a, add_special_tokens=False) + [stop] for a in answers])
    # bf16 logits: a few hundredths of a nat per token over ~8 tokens
    assert tree == pytest.approx(flat, abs=0.25), (tree, flat)


# ---- parity with transformers' own classes ------------------------------------------------------

def _reference(folder: Path, dtype: torch.dtype):
    from transformers import Phi4MultimodalForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = Phi4MultimodalForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation="sdpa")
    model.load_adapter(str(folder / "speech-lora"), adapter_name="speech")
    model.set_adapter("speech")
    return model.to("cuda").eval()


def _hf_inputs(model, clip: np.ndarray, dtype: torch.dtype):
    from transformers import Phi4MultimodalFeatureExtractor

    from speech.prompts import Task

    feats = Phi4MultimodalFeatureExtractor()([clip], sampling_rate=16000, return_tensors="pt")
    ids = torch.tensor([model.prompt_ids(Task(), int(feats["audio_embed_sizes"][0]))], device="cuda")
    return ids, feats["audio_input_features"].to("cuda", dtype), feats["audio_embed_sizes"].to("cuda")


@pytest.fixture
def no_tf32():
    """cuDNN convolutions default to TF32 (10-bit mantissa); the fp32 comparison wants fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
def test_tiny_checkpoint_matches_transformers_on_cuda_fp32(tiny_native, clips, no_tf32):
    from speech.decoding import greedy_decode
    from speech.model import SpeechModel

    ours = SpeechModel.load(tiny_native, device="cuda", dtype=torch.float32)
    reference = _reference(tiny_native, torch.float32)
    for clip in clips[:2]:
        ids, feats, sizes = _hf_inputs(ours, clip, torch.float32)
        expected = reference(input_ids=ids, audio_input_features=feats, audio_embed_sizes=sizes).logits
        features, lengths = ours.features([clip])
        got = ours(ids, torch.ones_like(ids), features, lengths).logits
        assert torch.max(torch.abs(got - expected)).item() <= 1e-3
        want = reference.generate(input_ids=ids, audio_input_features=feats, audio_embed_sizes=sizes,
                                  max_new_tokens=24, min_new_tokens=24, do_sample=False,
                                  suppress_tokens=ours.suppress_token_ids + ours.stop_token_ids,
                                  pad_token_id=ours.stop_token_ids[-1])[0, ids.shape[1]:].tolist()
        embeds = ours.embed(ids, features, lengths)
        mine = greedy_decode(ours.lm, embeds, torch.ones_like(ids), [-1], [24],
                             ours.suppress_token_ids + ours.stop_token_ids)[0]
        assert mine == want
    # batched == single on the GPU (padding never reaches valid frames)
    batched = ours.generate(clips, max_new_tokens=16)
    assert batched == [ours.generate([c], max_new_tokens=16)[0] for c in clips]


@pytest.fixture(scope="module")
def real_shape_folder(tmp_path_factory) -> Path:
    from speech.tiny import real_shape, write_tiny_checkpoint

    # the real model's shapes with 2 LM layers instead of 32: a few GB
    return write_tiny_checkpoint(tmp_path_factory.mktemp("real_shape") / "native", "native", seed=0,
                                 dims=real_shape(lm_layers=2), longrope=True)


def _logits_ours(model, clip: np.ndarray, ids: torch.Tensor) -> torch.Tensor:
    features, lengths = model.features([clip])
    return model(ids, torch.ones_like(ids), features, lengths).logits.float()


def _logits_reference(model, ids, feats, sizes) -> torch.Tensor:
    return model(input_ids=ids, audio_input_features=feats, audio_embed_sizes=sizes).logits.float()


@torch.no_grad()
def test_real_shapes_match_transformers(real_shape_folder, clips, no_tf32):
    """fp32: our model equals transformers' at the real shapes. bf16 (what runs on GPUs): ours is
    no further from the fp32 answer than transformers' own bf16 run."""
    from speech.model import SpeechModel

    config = json.loads((real_shape_folder / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "longrope"
    clip = clips[0]
    reference = _reference(real_shape_folder, torch.float32)
    ours = SpeechModel.load(real_shape_folder, device="cuda", dtype=torch.float32)
    ids, feats, sizes = _hf_inputs(ours, clip, torch.float32)
    truth = _logits_reference(reference, ids, feats, sizes)
    scale = truth.std().item()
    err32 = torch.max(torch.abs(_logits_ours(ours, clip, ids) - truth)).item() / scale
    # batched == single at these shapes: padded frames never reach the valid ones
    features, lengths = ours.features(clips)
    states, out_lengths = ours.encoder(features, lengths)
    leak = 0.0
    for i, one in enumerate(clips):
        f, n = ours.features([one])
        alone, _ = ours.encoder(f, n)
        leak = max(leak, torch.max(torch.abs(states[i, : out_lengths[i]] - alone[0])).item() / alone.std().item())
    del reference, ours

    reference = _reference(real_shape_folder, torch.bfloat16)
    ours = SpeechModel.load(real_shape_folder, device="cuda")
    assert ours.dtype == torch.bfloat16
    theirs16 = _logits_reference(reference, ids, feats.to(torch.bfloat16), sizes)
    ours16 = _logits_ours(ours, clip, ids)

    def score(logits):
        return (torch.max(torch.abs(logits - truth)).item() / scale,
                (logits.argmax(-1) == truth.argmax(-1)).float().mean().item())

    (err_ours, agree_ours), (err_theirs, agree_theirs) = score(ours16), score(theirs16)
    print(f"real shapes: fp32 max |diff| {err32:.2e} logit std; bf16 vs fp32: ours {err_ours:.3f} std, "
          f"argmax {agree_ours:.3f}; transformers {err_theirs:.3f} std, argmax {agree_theirs:.3f}")
    print(f"real shapes, fp32: batched vs single encoder states max |diff| {leak:.2e} std")
    assert err32 <= 1e-3 and leak <= 1e-3
    assert err_ours <= 1.5 * err_theirs + 0.02 and agree_ours >= agree_theirs - 0.03


# ---- serving and fine-tuning on the GPU -------------------------------------------------------

def test_server_streams_finals_from_the_gpu(builtin_cuda, clips):
    import grpc

    from service.client import recognition_config, stream
    from service.config import ServerOptions
    from service.proto import speech_grpc
    from service.server import ServerThread

    gap = np.zeros(16000, dtype=np.float32)
    talk = np.concatenate([gap, clips[0], gap, clips[1], gap])
    with ServerThread(ServerOptions(port=0), lambda: builtin_cuda, model_name="builtin") as srv:
        srv.wait_ready()
        with grpc.insecure_channel(srv.address) as ch:
            results = list(stream(speech_grpc.SpeechStub(ch), talk, recognition_config("en-US"), timeout=120))
    finals = [r.text for r in results if r.is_final]
    assert len(finals) == 2, finals
    assert _wer(finals, SENTENCES[:2]) <= 0.5


def test_finetune_trains_in_bf16_on_cuda(tiny_native, tmp_path):
    import yaml

    (tmp_path / "audio").mkdir()
    lines = [{"audio_filepath": str(speech_file(text, tmp_path / "audio")), "duration": 3.0, "text": text, "lang": "en"}
             for text in SENTENCES]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines * 2))
    config = {"model": str(tiny_native), "output_dir": str(tmp_path / "run"),
              "data": {"train": [str(tmp_path / "train.jsonl")], "validation": [str(tmp_path / "train.jsonl")],
                       "num_workers": 0},
              "trainable": ["lora", "projector"], "global_batch_size": 4, "micro_batch_size": 2, "max_steps": 6,
              "save_every": 3, "optim": {"lr": 3e-3, "warmup_steps": 0}, "tensorboard": False}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "speech.cli", "finetune", str(tmp_path / "cfg.yaml")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses)), losses
    info = json.loads((tmp_path / "run" / "adapter" / "training.json").read_text())
    print("finetune on cuda: precision", info["precision"], "losses", losses)
    assert info["precision"] == "bf16"  # auto: bf16 autocast on a GPU
    from encoder.audio import load_audio
    from speech.model import SpeechModel

    base = SpeechModel.load(tiny_native, device="cuda")
    tuned = SpeechModel.load(tiny_native, adapter=tmp_path / "run" / "adapter", device="cuda")
    clip = [load_audio(lines[0]["audio_filepath"])]
    assert tuned.generate(clip, max_new_tokens=12) != base.generate(clip, max_new_tokens=12)


if __name__ == "__main__":  # python tests/test_cuda.py --prepare DIR
    if len(sys.argv) != 3 or sys.argv[1] != "--prepare":
        sys.exit("usage: python tests/test_cuda.py --prepare DIR")
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for sentence in SENTENCES:
        print(_synthesize(sentence, out / f"{_slug(sentence)}.wav"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_core import TEXT  # the benchmark's clip, for bench_core.py --audio

    subprocess.run(["espeak-ng", "-w", str(out / "bench.wav"), TEXT], check=True)
    print(out / "bench.wav")
