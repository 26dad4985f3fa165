"""Stage 1a: a small byte-level BPE that keeps Phi-4-multimodal's chat and media tokens.

The real tokenizer (o200k-based, 200,064 ids) marks its special tokens as added tokens:
``<|endoftext|>`` (199999, also bos/pad/unk), ``<|endoftext10|>`` (200010, image),
``<|endoftext11|>`` (200011, audio), ``<|endofprompt|>`` (200018), ``<|assistant|>``
(200019), ``<|end|>`` (200020), ``<|user|>`` (200021), ``<|system|>`` (200022) and the tool
tokens (200023-200028). The prompt's ``<|audio_1|>`` is not a token: the processor replaces
it with one ``<|endoftext11|>`` per audio embedding. We keep the same strings as added
special tokens (ids 0..13 here; code must look ids up by string, never hard-code 200011),
learn ~4k merges on the English text, and save a `PreTrainedTokenizerFast` folder with the
real checkpoint's ``extra_special_tokens`` (image_token, audio_token) and chat template.

    python -m speech.builtin_recipe.tokenizer --text work/builtin/text/lm.txt --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOT = "<|endoftext|>"
IMAGE = "<|endoftext10|>"
AUDIO = "<|endoftext11|>"
END = "<|end|>"
SPECIAL_TOKENS = [
    EOT, IMAGE, AUDIO, "<|endofprompt|>", "<|assistant|>", END, "<|user|>", "<|system|>",
    "<|tool|>", "<|/tool|>", "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>", "<|tag|>",
]
# Phi-4-mini's template: each message is <|role|>content<|end|>; generation starts at <|assistant|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)


def train(text_files: list[Path], vocab_size: int = 4096, extra_texts: list[str] = ()) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def lines():
        for path in text_files:
            with open(path, encoding="utf-8") as f:
                yield from (line for line in f if line.strip())
        yield from extra_texts

    tok.train_from_iterator(lines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        extra_special_tokens={"image_token": IMAGE, "audio_token": AUDIO},
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


def save(tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """save_pretrained, with the config written the way the real checkpoint's is (a class name
    and an ``extra_special_tokens`` dict that transformers 4.x and 5.x both read)."""
    tokenizer.save_pretrained(out)
    config_path = Path(out) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["extra_special_tokens"] = {"image_token": IMAGE, "audio_token": AUDIO}
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    started = time.monotonic()
    tokenizer = train(args.text, args.vocab_size)
    save(tokenizer, args.out)
    print(json.dumps({"vocab_size": len(tokenizer), "seconds": round(time.monotonic() - started, 1),
                      "special": {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}}))


if __name__ == "__main__":
    main()
