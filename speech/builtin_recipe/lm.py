"""Stage 1: the built-in model's small causal LM (Phi-3 family, like Phi-4-Mini), pretrained on
English text from Debian packages and the task prompt templates, then frozen for stages 2-3.

    python -m speech.builtin_recipe.lm --out work/builtin/lm     # the shipped run's settings are the defaults

Runs the text extraction (`speech.builtin_recipe.text`) and the tokenizer (`.tokenizer`) when
their outputs are missing, then trains with one CPU thread and writes a transformers folder
(config.json, model.safetensors, generation_config.json, tokenizer files, train_log.jsonl,
info.json) that `Phi3ForCausalLM.from_pretrained` and `AutoTokenizer` load.

The shape is Phi-4-Mini's in miniature: SwiGLU MLP, grouped-query attention, partial rotary
embeddings (0.75), RMSNorm, tied input/output embeddings. Besides plain text the LM reads the
prompt templates the speech model will see, in two forms: the plain one
(``<|user|>PROMPT<|end|><|assistant|>ANSWER<|end|><|endoftext|>``), which teaches the answer
format and the stop tokens, and a "copy" form where the transcript (or the source-language
sentence) stands where the audio embeddings will be (``<|user|>SOURCE PROMPT<|end|>...``): it
teaches the frozen LM to read its answer off the positions the projector later fills.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, GenerationConfig, Phi3Config, Phi3ForCausalLM

from speech.builtin_recipe import text as text_stage
from speech.builtin_recipe import tokenizer as tokenizer_stage
from speech.data import asterisk
from speech.data.manifest import split_for
from speech.prompts import SEPARATOR, Task

log = logging.getLogger("speech.builtin_recipe.lm")

TRANSCRIBE = Task("transcribe").instruction()
TRANSLATE_EN = Task("translate", "en").instruction()
BOTH_EN = Task("both", "en").instruction()


def model_config(vocab_size: int, tokenizer) -> Phi3Config:
    eot = tokenizer.convert_tokens_to_ids(tokenizer_stage.EOT)
    return Phi3Config(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=2048,
        original_max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75},
        partial_rotary_factor=0.75,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        initializer_range=0.02,
    )


def templates(text_dir: Path, rng: np.random.Generator, tts_sentences: int = 6000) -> list[str]:
    """Prompt/answer sequences on train-split material only."""
    eot, end = tokenizer_stage.EOT, tokenizer_stage.END

    def turn(source: str | None, prompt: str, answer: str) -> str:
        user = f"{source} {prompt}" if source else prompt
        return f"<|user|>{user}{end}<|assistant|>{answer}{end}{eot}"

    english = (text_dir / "tts_train.txt").read_text(encoding="utf-8").split("\n")
    english = [s for s in english if s][:tts_sentences]
    fractions = text_stage.FRACTIONS
    english += [p.text for pid, p in sorted(asterisk.prompts("en").items()) if split_for(pid, fractions) == "train"]
    out = []
    for sentence in english:
        out.append(turn(sentence if rng.random() < 0.8 else None, TRANSCRIBE, sentence))
    en = asterisk.prompts("en")
    for lang in ("es", "fr"):
        for pid, p in sorted(asterisk.prompts(lang).items()):
            if pid not in en or split_for(pid, fractions) != "train":
                continue
            out.append(turn(p.text, TRANSCRIBE, p.text))
            out.append(turn(p.text, TRANSLATE_EN, en[pid].text))
            out.append(turn(p.text, BOTH_EN, f"{p.text} {SEPARATOR} {en[pid].text}"))
    return out


def token_stream(tokenizer, documents: list[str]) -> np.ndarray:
    eot = tokenizer.convert_tokens_to_ids(tokenizer_stage.EOT)
    ids: list[int] = []
    for start in range(0, len(documents), 2000):
        for row in tokenizer(documents[start : start + 2000], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            if not row or row[-1] != eot:
                ids.append(eot)
    return np.asarray(ids, dtype=np.int32)


@torch.no_grad()
def evaluate(model: Phi3ForCausalLM, chunks: torch.Tensor, batch: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(chunks), batch):
        x = chunks[start : start + batch].long()
        out = model(input_ids=x, labels=x)
        n = x.numel() - x.shape[0]
        total += out.loss.item() * n
        count += n
    model.train()
    return total / count


def save(model: Phi3ForCausalLM, tokenizer, out: Path, info: dict) -> None:
    """Write to a temporary folder and swap it in, so a crash never leaves half a model."""
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer_stage.save(tokenizer, tmp)
    eot = tokenizer.convert_tokens_to_ids(tokenizer_stage.EOT)
    end = tokenizer.convert_tokens_to_ids(tokenizer_stage.END)
    GenerationConfig(bos_token_id=eot, eos_token_id=[eot, end], pad_token_id=eot, do_sample=False).save_pretrained(tmp)
    (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    if (out / "train_log.jsonl").exists():
        os.replace(out / "train_log.jsonl", tmp / "train_log.jsonl")
    old = out.with_name(out.name + ".old")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--text-dir", type=Path, help="output of speech.builtin_recipe.text (default OUT/../text)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=330)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=110)
    parser.add_argument("--max-minutes", type=float, default=48.0, help="stop (and save) after this long")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.monotonic()

    text_dir = args.text_dir or args.out.parent / "text"
    if not (text_dir / "lm.txt").is_file():
        log.info("text: %s", text_stage.build(text_dir, args.seed))
    tok_dir = args.out.parent / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        tokenizer_stage.save(tokenizer_stage.train([text_dir / "lm.txt"], args.vocab_size), tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)

    docs = [d for d in (text_dir / "lm.txt").read_text(encoding="utf-8").split("\n\n") if d.strip()]
    tmpl = templates(text_dir, rng)
    documents = docs + tmpl
    rng.shuffle(documents)
    stream = token_stream(tokenizer, documents)
    dev_docs = [d for d in (text_dir / "lm_dev.txt").read_text(encoding="utf-8").split("\n\n") if d.strip()]
    dev_stream = token_stream(tokenizer, dev_docs)
    n_dev = min(len(dev_stream) // (args.seq_len + 1), 128)
    dev_chunks = torch.from_numpy(dev_stream[: n_dev * (args.seq_len + 1)].reshape(n_dev, args.seq_len + 1))
    dev_bytes = sum(len(d.encode()) for d in dev_docs) * (dev_chunks.numel() / len(dev_stream))
    log.info("train tokens %d (%d documents + %d templates), dev tokens %d", len(stream), len(docs), len(tmpl),
             dev_chunks.numel())

    config = model_config(len(tokenizer), tokenizer)
    model = Phi3ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    log.info("parameters %d", params)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )

    def lr_at(step: int) -> float:  # linear warm-up, cosine to 10%
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    args.out.mkdir(parents=True, exist_ok=True)
    log_file = (args.out / "train_log.jsonl").open("a")
    span = args.seq_len + 1
    tokens_seen, step, train_loss = 0, 0, float("nan")
    model.train()
    for step in range(args.steps):
        starts = rng.integers(0, len(stream) - span, size=args.batch)
        x = torch.from_numpy(np.stack([stream[s : s + span] for s in starts])).long()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens_seen += x.numel()
        train_loss = loss.item() if step == 0 else 0.98 * train_loss + 0.02 * loss.item()
        elapsed = time.monotonic() - started
        record = {"step": step + 1, "loss": round(loss.item(), 4), "lr": lr_at(step), "tokens": tokens_seen,
                  "elapsed_s": round(elapsed, 1)}
        last = step + 1 == args.steps or elapsed > args.max_minutes * 60
        if (step + 1) % args.eval_every == 0 or last:
            dev_loss = evaluate(model, dev_chunks, args.batch)
            record.update(dev_loss=round(dev_loss, 4), dev_ppl=round(math.exp(dev_loss), 2))
            log.info("step %d loss %.3f dev %.3f ppl %.1f lr %.2e %.0f tok/s", step + 1, train_loss, dev_loss,
                     math.exp(dev_loss), lr_at(step), tokens_seen / elapsed)
        elif (step + 1) % 25 == 0:
            log.info("step %d loss %.3f lr %.2e %.0f tok/s", step + 1, train_loss, lr_at(step), tokens_seen / elapsed)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        if last:
            break
    log_file.close()

    dev_loss = evaluate(model, dev_chunks, args.batch)
    info = {
        "parameters": params,
        "config": {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                    "num_hidden_layers", "num_attention_heads", "num_key_value_heads")},
        "steps": step + 1,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "tokens_seen": tokens_seen,
        "train_tokens": int(len(stream)),
        "epochs": round(tokens_seen / len(stream), 2),
        "train_loss_ema": round(train_loss, 4),
        "dev_loss": round(dev_loss, 4),
        "dev_ppl": round(math.exp(dev_loss), 2),
        "dev_bits_per_byte": round(dev_loss * dev_chunks.numel() / dev_bytes / math.log(2), 3),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "threads": args.threads,
        "seed": args.seed,
        "lr": args.lr,
    }
    save(model, tokenizer, args.out, info)
    log.info("saved %s: %s", args.out, json.dumps(info))


if __name__ == "__main__":
    main()
