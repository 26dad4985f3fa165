"""Model-core benchmark: our features and batched decoding vs transformers' own, side by side.

Same weights on both sides (a tiny-but-not-trivial native checkpoint: encoder 4 blocks dim 256,
LM 4 layers hidden 256), same espeak-ng speech, outputs checked identical before timing counts.
Peers: transformers' Phi4MultimodalFeatureExtractor, and Phi4MultimodalForCausalLM.generate
with the speech LoRA loaded through peft. Clips in a batch share one length, because transformers'
encoder lets padding leak into valid frames (ours does not), and we compare like with like.

    python bench/bench_core.py            # ~2 minutes on 2 CPU cores
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


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def speech(tmp: Path, seconds: float) -> np.ndarray:
    from encoder.audio import load_audio

    text = ("the quick brown fox jumps over the lazy dog while speech recognition turns sound into words "
            "and the service streams every partial result back to the client as it arrives ")
    subprocess.run(["espeak-ng", "-w", str(tmp / "bench.wav"), text * 3], check=True)
    audio = load_audio(tmp / "bench.wav")
    return audio[: int(seconds * 16000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="clip length (default 8 s)")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens decoded per clip (default 48)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalForCausalLM
    from transformers.utils import logging as hf_logging

    from encoder.features import LogMelFeatures
    from speech.decoding import greedy_decode
    from speech.model import SpeechModel
    from speech.prompts import Task
    from speech.tiny import TinyDims, write_tiny_checkpoint

    hf_logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp())
    dims = TinyDims(lm_hidden=256, lm_layers=4, lm_heads=4, lm_kv_heads=2, lm_intermediate=1024, enc_hidden=256,
                    enc_blocks=4, enc_heads=4, enc_intermediate=1024, enc_conv_channels=256, bias_max_distance=500)
    ckpt = write_tiny_checkpoint(tmp / "ckpt", "native", seed=0, dims=dims)
    clip = speech(tmp, args.seconds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; clip {len(clip) / 16000:.1f} s; "
          f"encoder 4x256, LM 4x256; {args.new_tokens} new tokens per clip\n")

    # ---- features --------------------------------------------------------------------------
    reference_fe = Phi4MultimodalFeatureExtractor()
    ours_fe = LogMelFeatures()
    rows = []
    for batch in (1, 8):
        clips = [clip] * batch
        ref = reference_fe(clips, sampling_rate=16000, return_tensors="pt")["audio_input_features"]
        got, _ = ours_fe(clips)
        diff = torch.max(torch.abs(ref - got)).item()
        assert diff <= 1e-3, diff
        t_ref = best_of(lambda: reference_fe(clips, sampling_rate=16000, return_tensors="pt"), args.repeat * 3)
        t_ours = best_of(lambda: ours_fe(clips), args.repeat * 3)
        rows.append(("features", batch, t_ref, t_ours, f"max |diff| {diff:.1e}"))

    # ---- decoding --------------------------------------------------------------------------
    ours = SpeechModel.load(ckpt)
    reference = Phi4MultimodalForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    reference.load_adapter(str(ckpt / "speech-lora"), adapter_name="speech")
    reference.set_adapter("speech")
    task = Task()
    for batch in (1, 8):
        clips = [clip[i * 800:] for i in range(batch)]  # different audio, one length per batch
        n = min(len(c) for c in clips)
        clips = [c[:n] for c in clips]

        def run_reference():
            feats = reference_fe(clips, sampling_rate=16000, return_tensors="pt")
            ids = torch.tensor([ours.prompt_ids(task, int(k)) for k in feats["audio_embed_sizes"]])
            with torch.inference_mode():
                out = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         audio_input_features=feats["audio_input_features"],
                                         audio_embed_sizes=feats["audio_embed_sizes"],
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
        assert expected == got, f"outputs differ at batch {batch}:\n{expected[0]}\n{got[0]}"
        t_ref = best_of(run_reference, args.repeat)
        t_ours = best_of(run_ours, args.repeat)
        audio_s = batch * n / 16000
        rows.append(("end2end", batch, t_ref, t_ours, f"RTFx ours {audio_s / t_ours:.0f} vs {audio_s / t_ref:.0f}"))

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

        assert loop_reference() == loop_ours(), "decoding loops differ"
        t_ref, t_ours = best_of(loop_reference, args.repeat), best_of(loop_ours, args.repeat)
        rows.append(("loop", batch, t_ref, t_ours, f"{args.new_tokens} tokens/clip, LM only"))

    print("features: log-mel only; end2end: features + encoder + projector + decoding (HF: extractor +\n"
          "Phi4MultimodalForCausalLM.generate); loop: greedy decoding from the same prompt embeddings\n")
    print(f"{'stage':<9}{'batch':>6}{'transformers s':>16}{'ours s':>10}{'speed-up':>10}  note")
    for stage, batch, t_ref, t_ours, note in rows:
        print(f"{stage:<9}{batch:>6}{t_ref:>16.4f}{t_ours:>10.4f}{t_ref / t_ours:>9.1f}x  {note}")
    print("\noutputs identical on both sides (features within 1e-3; decoded tokens equal)")


if __name__ == "__main__":
    main()
