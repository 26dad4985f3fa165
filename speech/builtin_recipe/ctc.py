"""Stage 2 of the built-in model: the fresh conformer encoder learns to hear, with CTC, alone.

Why: Phi-4-multimodal's encoder was an ASR model before it met the LM. Started from random
weights, our encoder got its only signal through a frozen 5M-parameter LM, and on 2 CPU cores
that cold start never left the LM's unconditional loss. A CTC head teaches the encoder to hear
directly; stage 3 then only has to map that onto the LM. The encoder weights are written back
into a copy of the model folder (saved every ``--save-every`` minutes), and the character head
next to them as ``ctc_head.safetensors``: shipped with the built-in model, it rescores the LM's
choices during decoding (speech/ctc.py, joint CTC/attention decoding). ``--freeze-encoder``
trains only a head on a finished encoder.

Targets: characters (a-z, apostrophe, space) by default, or the LM's BPE tokens (``--targets
bpe``). The encoder emits one frame per 80 ms (12.5/s) and English is ~15 characters/s, so for
characters the head predicts ``--upsample`` (default 3) CTC slots per encoder frame (a linear
layer to U x (V+1), reshaped), the usual trick for CTC over units faster than the frame rate.
The learning rate matters most: see the note at ``--lr``.

    python -m speech.builtin_recipe.ctc --model work/builtin/stage1 --out work/builtin/stage2 \\
        --manifest work/builtin/data/tts_espeak/train.jsonl ... --max-minutes 50
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from encoder.audio import load_audio
from encoder.conformer import ConformerEncoder
from encoder.features import LogMelFeatures
from speech.checkpoint import AUDIO_PREFIX, read_spec
from speech.ctc import char_ids as spelled_ids
from speech.finetune.data import read_manifests
from speech.model import load_tokenizer

log = logging.getLogger("speech.builtin_recipe.ctc")
ENCODER = AUDIO_PREFIX + "encoder."


def batches(examples, batch_size: int, seed: int):
    """Duration-sorted batches in a shuffled order, forever (a new shuffle each epoch)."""
    rng = random.Random(seed)
    by_length = sorted(examples, key=lambda e: e.duration)
    groups = [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    while True:
        rng.shuffle(groups)
        yield from groups


CHARS = " 'abcdefghijklmnopqrstuvwxyz"


def char_ids(text: str) -> list[int]:
    """The head's targets: numbers spelled, lower-cased letters, apostrophes and single spaces as
    ids 0..27 (speech.ctc.char_ids, the spelling the decoder and the lexicon use)."""
    return spelled_ids(text, CHARS)


def greedy_chars(log_probs: torch.Tensor, length: int, blank: int) -> str:
    """Best-path CTC decoding of one utterance (collapse repeats, drop blanks)."""
    best = log_probs[:length].argmax(-1).tolist()
    out, prev = [], blank
    for i in best:
        if i != blank and i != prev:
            out.append(CHARS[i])
        prev = i
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="native model folder with a fresh encoder")
    parser.add_argument("--out", required=True, type=Path, help="copy of --model with the pretrained encoder")
    parser.add_argument("--manifest", action="append", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    # 1.5e-3 kept this conformer on the CTC plateau for 1,300 steps and could not even memorize
    # 16 clips in 200 steps; 5e-4 memorizes them in 120 (docs/builtin-model.md, "Training notes").
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--steps", type=int, default=1500, help="schedule length (cosine to 5%%)")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="stop (and save) after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", choices=("chars", "bpe"), default="chars")
    parser.add_argument("--upsample", type=int, default=3, help="CTC slots per encoder frame")
    parser.add_argument("--save-every", type=float, default=10.0, help="minutes between saves of --out")
    parser.add_argument("--snapshot-every", type=int, default=0, metavar="STEPS",
                        help="also keep a copy of --out every STEPS steps as OUT/step_N (a model folder "
                             "`graft` takes), to choose a round's checkpoint by decoded dev WER afterwards: "
                             "greedy CTC WER on dev, all the training loop sees, has preferred checkpoints "
                             "the full decoder scores worse (docs/builtin-model.md, stage 2x)")
    parser.add_argument("--init-head", type=Path, default=None,
                        help="start from this ctc_head.safetensors (continuing a run) instead of a fresh head")
    parser.add_argument("--speed-perturb", type=float, default=0.0, metavar="F",
                        help="resample each clip by a random factor in [1-F, 1+F] (tempo and pitch: new voices)")
    parser.add_argument("--specaugment", action="store_true",
                        help="mask 2 random mel bands (<= 15) and 2 time spans (<= 5%% each) per clip")
    parser.add_argument("--vtlp", type=float, default=0.0, metavar="F",
                        help="vocal tract length perturbation: warp each clip's frequencies by a random "
                             "factor in [1-F, 1+F] (e.g. 0.12: new speakers from the few natural voices)")
    parser.add_argument("--vtlp-shift", type=float, default=0.0, metavar="S",
                        help="centre the VTLP range on 1+S instead of 1 (e.g. 0.05: more shorter vocal "
                             "tracts, since the natural training voices are all men's)")
    parser.add_argument("--narrowband", type=float, default=0.0, metavar="P",
                        help="share of clips band-limited to telephone speech (to 8 kHz and back), like the "
                             "Asterisk prompts and real call audio")
    parser.add_argument("--freeze-encoder", action="store_true",
                        help="train only the CTC head on --model's encoder (e.g. lr 3e-3, a few hundred steps)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)

    spec = read_spec(args.model)
    tokenizer = load_tokenizer(args.model)
    state = load_file(str(args.model / "model.safetensors"))
    encoder = ConformerEncoder(spec.audio_config)
    encoder.load_state_dict({k[len(ENCODER):]: v.float() for k, v in state.items() if k.startswith(ENCODER)})
    if args.targets == "bpe":
        blank, upsample = len(tokenizer), 1  # one past the vocabulary
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    else:
        blank, upsample, encode = len(CHARS), args.upsample, char_ids
    head = nn.Linear(spec.audio_config.hidden_size, upsample * (blank + 1))
    if args.init_head is not None:
        head.load_state_dict({k: v.float() for k, v in load_file(str(args.init_head)).items()})
    if args.freeze_encoder:
        encoder.requires_grad_(False)
    params = [p for p in list(encoder.parameters()) + list(head.parameters()) if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / args.warmup) * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    featurizer = LogMelFeatures("cpu")
    corpus = read_manifests(args.manifest)
    examples = [e for e in corpus.examples if e.task.kind == "transcribe"]
    log.info("CTC pretraining on %d clips (%.1f h); encoder %d parameters", len(examples),
             sum(e.duration for e in examples) / 3600, sum(p.numel() for p in encoder.parameters()))

    copy_model_files(args)
    rng = random.Random(args.seed + 1)
    encoder.train(not args.freeze_encoder)
    start, ema, history = time.time(), None, []
    last_save = start
    for step, batch in enumerate(batches(examples, args.batch_size, args.seed), 1):
        audios = [narrowband(perturb(load_audio(e.audio), args.speed_perturb, rng), args.narrowband, rng)
                  for e in batch]
        labels = [encode(e.answer) for e in batch]
        warp = ([1.0 + args.vtlp_shift + rng.uniform(-args.vtlp, args.vtlp) for _ in batch]
                if args.vtlp > 0 else None)
        features, lengths = featurizer(audios, warp=warp)
        if args.specaugment:
            features = spec_augment(features, lengths, rng)
        with torch.set_grad_enabled(not args.freeze_encoder):
            states, out_lengths = encoder(features, lengths)
        logits = head(states)  # [B, T, U * (V + 1)] -> [B, U * T, V + 1]
        logits = logits.reshape(logits.shape[0], -1, blank + 1)
        out_lengths = out_lengths * upsample
        log_probs = F.log_softmax(logits, dim=-1).transpose(0, 1)  # [T, B, V]
        targets = torch.cat([torch.tensor(l) for l in labels])
        loss = F.ctc_loss(log_probs, targets, out_lengths, torch.tensor([len(l) for l in labels]),
                          blank=blank, reduction="mean", zero_infinity=True)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 20 == 0:
            minutes = (time.time() - start) / 60
            log.info("step %d loss %.3f (ema %.3f) lr %.2e %.1f min", step, loss.item(), ema,
                     sched.get_last_lr()[0], minutes)
            record = {"step": step, "loss": round(ema, 4), "minutes": round(minutes, 2)}
            if args.targets == "chars" and step % 100 == 0:
                record["sample"] = {"ref": "".join(CHARS[i] for i in labels[0]),
                                    "hyp": greedy_chars(log_probs[:, 0].detach(), int(out_lengths[0]), blank)}
                log.info("  ref %s\n  hyp %s", record["sample"]["ref"], record["sample"]["hyp"])
            history.append(record)
        done = step >= args.steps or (time.time() - start) / 60 >= args.max_minutes
        snapshot = args.snapshot_every > 0 and step % args.snapshot_every == 0
        if done or snapshot or time.time() - last_save >= args.save_every * 60:
            save(args, state, encoder, head, {"manifests": args.manifest, "clips": len(examples), "steps": step,
                                        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                                        "targets": args.targets, "upsample": upsample,
                                        "freeze_encoder": args.freeze_encoder, "init_head": str(args.init_head),
                                        "speed_perturb": args.speed_perturb, "specaugment": args.specaugment,
                                        "vtlp": args.vtlp, "vtlp_shift": args.vtlp_shift, "narrowband": args.narrowband,
                                        "final_loss_ema": ema, "history": history})
            last_save = time.time()
        if snapshot:
            kept = args.out / f"step_{step}"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(args.out, kept, ignore=shutil.ignore_patterns("step_*", "*.tmp"))
            log.info("kept a snapshot of step %d in %s", step, kept)
        if done:
            break
    log.info("wrote %s after %d steps (CTC loss %.3f)", args.out, step, ema)


def perturb(audio, factor: float, rng: random.Random):
    """Resample by a random factor (soxr): tempo and pitch move together, a cheap new voice."""
    if factor <= 0:
        return audio
    import soxr

    rate = 1.0 + rng.uniform(-factor, factor)
    return soxr.resample(audio, 16_000, round(16_000 / rate)).astype(audio.dtype)


def narrowband(audio, share: float, rng: random.Random):
    """With probability `share`, the clip as a phone line carries it: through 8 kHz (soxr's
    anti-aliasing drops everything above 4 kHz) and back to 16 kHz."""
    if share <= 0 or rng.random() >= share:
        return audio
    import soxr

    return soxr.resample(soxr.resample(audio, 16_000, 8_000), 8_000, 16_000).astype(audio.dtype)[: len(audio)]


def spec_augment(features: torch.Tensor, lengths: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """SpecAugment (Park et al. 2019), mild: 2 mel bands of <= 15 and 2 time spans of <= 5 % set
    to the clip's mean (log-mel values are not centred on 0)."""
    features = features.clone()
    for i, n in enumerate(lengths.tolist()):
        fill = float(features[i, :n].mean())
        for _ in range(2):
            width = rng.randint(0, 15)
            start = rng.randint(0, features.shape[-1] - width)
            features[i, :, start:start + width] = fill
            span = rng.randint(0, max(1, n // 20))
            begin = rng.randint(0, max(0, n - span))
            features[i, begin:begin + span] = fill
    return features


def copy_model_files(args) -> None:
    """--out gets --model's config and tokenizer files (the weights are written by `save`); a
    previous run's snapshots there go, so none outlives the run it came from."""
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("step_*"):
        if old.is_dir():
            shutil.rmtree(old)
    for item in args.model.iterdir():
        if item.is_file() and item.name != "model.safetensors":
            shutil.copy2(item, args.out / item.name)


def save(args, state: dict, encoder: ConformerEncoder, head: nn.Linear, record: dict) -> None:
    """Write --out's weights: --model's, with the encoder's replaced by the ones being trained; and the head."""
    trained = {ENCODER + k: v.detach().to(state[ENCODER + k].dtype).contiguous() for k, v in encoder.state_dict().items()}
    state.update(trained)
    tmp = args.out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(args.out / "model.safetensors")  # atomic: a kill mid-save keeps the last good copy
    if record["targets"] == "chars":
        head_tmp = args.out / "ctc_head.safetensors.tmp"
        save_file({"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()},
                  str(head_tmp), metadata={"chars": CHARS, "upsample": str(record["upsample"])})
        head_tmp.replace(args.out / "ctc_head.safetensors")
    (args.out / "ctc_pretraining.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
