"""Model-core benchmark: our features and batched decoding vs transformers' own, side by side.

Same weights on both sides (a tiny-but-not-trivial native checkpoint: encoder 4 blocks dim 256,
LM 4 layers hidden 256), same espeak-ng speech, outputs checked identical before timing counts.
Peers: transformers' Phi4MultimodalFeatureExtractor, and Phi4MultimodalForCausalLM.generate
with the speech LoRA loaded through peft. Clips in a batch share one length, because transformers'
encoder lets padding leak into valid frames (ours does not), and we compare like with like.

    python bench/bench_core.py            # ~2 minutes on 2 CPU cores
    python bench/bench_core.py --device cuda --shape real --audio talk.wav   # a GPU, bf16

`--shape real` writes a checkpoint with the real model's shapes (encoder 24 x 1024, LM 32 layers
of hidden 3072, 24/8 heads, LoRA r 320, longrope; random weights, a small vocabulary) and both
sides run it in bf16 with SDPA: the real workload's speed without the real weights. In bf16 the
two sides' tokens may part after a near-tie (different kernels, different rounding), so there the
bench reports how many tokens agree instead of requiring all of them.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")


TEXT = ("the quick brown fox jumps over the lazy dog while speech recognition turns sound into words "
        "and the service streams every partial result back to the client as it arrives ") * 3
SMALL_SHAPE = dict(lm_hidden=256, lm_heads=4, lm_kv_heads=2, lm_intermediate=1024, enc_hidden=256, enc_blocks=4,
                   enc_heads=4, enc_intermediate=1024, enc_conv_channels=256, bias_max_distance=500)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def speech(tmp: Path, seconds: float, audio_file: str | None) -> np.ndarray:
    from encoder.audio import load_audio

    if audio_file is None:
        audio_file = str(tmp / "bench.wav")
        subprocess.run(["espeak-ng", "-w", audio_file, TEXT], check=True)
    audio = load_audio(audio_file)
    return audio[: int(seconds * 16000)]


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions where two token lists agree, counted up to the first difference per row."""
    same = 0
    for x, y in zip(a, b):
        for s, t in zip(x, y):
            if s != t:
                break
            same += 1
    return same / max(1, sum(len(x) for x in a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="clip length (default 8 s)")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens decoded per clip (default 48)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--shape", choices=("small", "real"), default="small",
                        help="small: encoder 4x256, LM 4x256, fp32 (default); real: the real model's shapes, bf16")
    parser.add_argument("--lm-layers", type=int, default=None, help="LM depth (default 4 small, 32 real)")
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    parser.add_argument("--audio", default=None, help="a speech file to cut clips from (default: espeak-ng speech)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = torch.device(args.device)
    real = args.shape == "real"
    dtype = torch.bfloat16 if real else torch.float32
    batches = [int(b) for b in args.batches.split(",")]

    from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalForCausalLM
    from transformers.utils import logging as hf_logging

    from encoder.features import LogMelFeatures
    from speech.decoding import greedy_decode
    from speech.model import SpeechModel
    from speech.prompts import Task
    from speech.tiny import TinyDims, real_shape, write_tiny_checkpoint

    hf_logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp())
    layers = args.lm_layers or (32 if real else 4)
    dims = real_shape(layers) if real else TinyDims(lm_layers=layers, **SMALL_SHAPE)
    start = time.perf_counter()
    ckpt = write_tiny_checkpoint(tmp / "ckpt", "native", seed=0, dims=dims, longrope=real, dtype=dtype)
    written = time.perf_counter() - start
    clip = speech(tmp, args.seconds, args.audio)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; clip {len(clip) / 16000:.1f} s; encoder {dims.enc_blocks}x"
          f"{dims.enc_hidden}, LM {layers}x{dims.lm_hidden}, {str(dtype).removeprefix('torch.')}; "
          f"{args.new_tokens} new tokens per clip; checkpoint written in {written:.0f} s\n")

    # ---- features --------------------------------------------------------------------------
    reference_fe = Phi4MultimodalFeatureExtractor()
    ours_fe = LogMelFeatures(device)
    rows = []
    for batch in batches:
        clips = [clip] * batch
        ref = reference_fe(clips, sampling_rate=16000, return_tensors="pt")["audio_input_features"]
        got, _ = ours_fe(clips)
        diff = torch.max(torch.abs(ref - got.cpu())).item()
        assert diff <= 1e-3, diff
        t_ref = best_of(lambda: reference_fe(clips, sampling_rate=16000, return_tensors="pt"), args.repeat * 3)
        t_ours = best_of(lambda: ours_fe(clips), args.repeat * 3)
        rows.append(("features", batch, t_ref, t_ours, f"max |diff| {diff:.1e}"))

    # ---- decoding --------------------------------------------------------------------------
    start = time.perf_counter()
    ours = SpeechModel.load(ckpt, device=str(device), dtype=dtype)
    load_ours = time.perf_counter() - start
    start = time.perf_counter()
    reference = Phi4MultimodalForCausalLM.from_pretrained(str(ckpt), dtype=dtype, attn_implementation="sdpa")
    reference.load_adapter(str(ckpt / "speech-lora"), adapter_name="speech")
    reference.set_adapter("speech")
    reference = reference.to(device).eval()
    load_reference = time.perf_counter() - start
    rows.append(("load", 1, load_reference, load_ours, "folder -> ready to decode (HF: + peft adapter)"))
    task = Task()
    for batch in batches:
        clips = [clip[i * 800:] for i in range(batch)]  # different audio, one length per batch
        n = min(len(c) for c in clips)
        clips = [c[:n] for c in clips]

        def run_reference():
            feats = reference_fe(clips, sampling_rate=16000, return_tensors="pt")
            ids = torch.tensor([ours.prompt_ids(task, int(k)) for k in feats["audio_embed_sizes"]], device=device)
            with torch.inference_mode():
                out = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         audio_input_features=feats["audio_input_features"].to(device, dtype),
                                         audio_embed_sizes=feats["audio_embed_sizes"].to(device),
                                         max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                         do_sample=False, suppress_tokens=ours.suppress_token_ids, pad_token_id=ours.stop_token_ids[-1])
            return out[:, ids.shape[1]:].tolist()

        def run_ours():
            features, lengths = ours.features(clips)
            n_tok = ours.encoder.output_lengths(lengths).tolist()
            ids, mask = ours._left_pad([ours.prompt_ids(task, k) for k in n_tok])
            with torch.inference_mode():
                embeds = ours.embed(ids, features, lengths)
                # like min_new_tokens on the reference side: stop tokens are suppressed, every clip decodes the budget
                return greedy_decode(ours.lm, embeds, mask, [-1], [args.new_tokens] * len(clips),
                                     ours.suppress_token_ids + ours.stop_token_ids)

        expected, got = run_reference(), run_ours()
        same = agreement(expected, got)
        if not real:
            assert expected == got, f"outputs differ at batch {batch}:\n{expected[0]}\n{got[0]}"
        t_ref = best_of(run_reference, args.repeat)
        t_ours = best_of(run_ours, args.repeat)
        audio_s = batch * n / 16000
        rows.append(("end2end", batch, t_ref, t_ours, f"RTFx ours {audio_s / t_ours:.0f} vs {audio_s / t_ref:.0f}; "
                                                      f"tokens agree {same:.0%}"))

        # The decoding loop alone: the same prompt embeddings (audio already encoded) into
        # transformers' generate on the same merged LM, and into our greedy_decode.
        features, lengths = ours.features(clips)
        ids, mask = ours._left_pad([ours.prompt_ids(task, k) for k in ours.encoder.output_lengths(lengths).tolist()])
        with torch.inference_mode():
            embeds = ours.embed(ids, features, lengths)

        def loop_reference():
            with torch.inference_mode():
                return ours.lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=args.new_tokens,
                                        min_new_tokens=args.new_tokens, do_sample=False,
                                        suppress_tokens=ours.suppress_token_ids,
                                        pad_token_id=ours.stop_token_ids[-1]).tolist()

        def loop_ours():
            return greedy_decode(ours.lm, embeds, mask, [-1], [args.new_tokens] * len(clips),
                                 ours.suppress_token_ids + ours.stop_token_ids)

        same = agreement(loop_reference(), loop_ours())
        if not real:
            assert same == 1.0, "decoding loops differ"
        t_ref, t_ours = best_of(loop_reference, args.repeat), best_of(loop_ours, args.repeat)
        rows.append(("loop", batch, t_ref, t_ours, f"{args.new_tokens} tokens/clip, LM only; tokens agree {same:.0%}"))

    print("features: log-mel only; end2end: features + encoder + projector + decoding (HF: extractor +\n"
          "Phi4MultimodalForCausalLM.generate); loop: greedy decoding from the same prompt embeddings\n")
    print(f"{'stage':<9}{'batch':>6}{'transformers s':>16}{'ours s':>10}{'speed-up':>10}  note")
    for stage, batch, t_ref, t_ours, note in rows:
        print(f"{stage:<9}{batch:>6}{t_ref:>16.4f}{t_ours:>10.4f}{t_ref / t_ours:>9.1f}x  {note}")
    if device.type == "cuda":
        print(f"\npeak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB (both models loaded)")
    print("\nfeatures within 1e-3 on both sides; " + ("tokens as agreed above (bf16)" if real else
                                                      "decoded tokens equal"))


if __name__ == "__main__":
    main()
