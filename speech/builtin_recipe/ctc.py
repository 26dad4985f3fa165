"""Stage 1c of the built-in model: pretrain the fresh conformer encoder with CTC on English speech.

Why: Phi-4-multimodal's encoder was an ASR model before it met the LM. Started from random
weights, our encoder gets its only signal through a frozen 5M-parameter LM in stage 2, and on
2 CPU cores that cold start did not end within 300 steps (the loss stayed at the LM's
unconditional level). A CTC head over the LM's own BPE tokens (about 5 tokens/s against the
encoder's 12.5 frames/s) teaches the encoder to hear words directly; stage 2 then only has to
map that onto the LM. The head is thrown away; the encoder weights are written back into a copy
of the model folder.

    python -m speech.builtin_recipe.ctc --model work/builtin/stage1 --out work/builtin/stage1c \\
        --manifest work/builtin/data/tts_espeak/train.jsonl ... --max-minutes 20
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="native model folder with a fresh encoder")
    parser.add_argument("--out", required=True, type=Path, help="copy of --model with the pretrained encoder")
    parser.add_argument("--manifest", action="append", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--steps", type=int, default=1500, help="schedule length (cosine to 5%)")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="stop (and save) after this long")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)

    spec = read_spec(args.model)
    tokenizer = load_tokenizer(args.model)
    state = load_file(str(args.model / "model.safetensors"))
    encoder = ConformerEncoder(spec.audio_config)
    encoder.load_state_dict({k[len(ENCODER):]: v.float() for k, v in state.items() if k.startswith(ENCODER)})
    blank = len(tokenizer)  # one past the vocabulary
    head = nn.Linear(spec.audio_config.hidden_size, blank + 1)
    params = list(encoder.parameters()) + list(head.parameters())
    optim = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / args.warmup) * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    featurizer = LogMelFeatures("cpu")
    corpus = read_manifests(args.manifest)
    examples = [e for e in corpus.examples if e.task.kind == "transcribe"]
    log.info("CTC pretraining on %d clips (%.1f h); encoder %d parameters", len(examples),
             sum(e.duration for e in examples) / 3600, sum(p.numel() for p in encoder.parameters()))

    encoder.train()
    start, ema, history = time.time(), None, []
    for step, batch in enumerate(batches(examples, args.batch_size, args.seed), 1):
        audios = [load_audio(e.audio) for e in batch]
        labels = [tokenizer.encode(e.answer, add_special_tokens=False) for e in batch]
        features, lengths = featurizer(audios)
        states, out_lengths = encoder(features, lengths)
        log_probs = F.log_softmax(head(states), dim=-1).transpose(0, 1)  # [T, B, V]
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
            history.append({"step": step, "loss": round(ema, 4), "minutes": round(minutes, 2)})
        if step >= args.steps or (time.time() - start) / 60 >= args.max_minutes:
            break

    args.out.mkdir(parents=True, exist_ok=True)
    for item in args.model.iterdir():
        if item.is_file() and item.name != "model.safetensors":
            shutil.copy2(item, args.out / item.name)
    trained = {ENCODER + k: v.detach().to(state[ENCODER + k].dtype).contiguous() for k, v in encoder.state_dict().items()}
    state.update(trained)
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    (args.out / "ctc_pretraining.json").write_text(json.dumps(
        {"manifests": args.manifest, "clips": len(examples), "steps": step, "batch_size": args.batch_size,
         "lr": args.lr, "seed": args.seed, "final_loss_ema": ema, "history": history}, indent=2))
    log.info("wrote %s after %d steps (CTC loss %.3f)", args.out, step, ema)


if __name__ == "__main__":
    main()
