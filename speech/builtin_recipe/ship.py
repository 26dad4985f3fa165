"""Copy a trained native model folder into the package as the built-in model, weights in fp16.

fp16 halves the size (the package keeps the model under 60 MB); `SpeechModel.load` casts back to
fp32 on CPU. The config gets `speechlora_builtin: true`, so `speechlora info` says what it is.

    python -m speech.builtin_recipe.ship --from work/builtin/stage3/model --to speech/builtin/model \
        --ctc-head work/builtin/stage2/ctc_head.safetensors --lexicon-from work/builtin/text/lm.txt

`--ctc-head` adds stage 2's character CTC head (kept in fp32: it is 90 kB) for CTC rescoring
(speech/ctc.py), and `--lexicon-from` the word list it respells with (lexicon.txt: the words of
the LM's training text, ~36k), and with `--ngram-from` a word 4-gram on the sentences of that
text (unpruned, ngram.npz, speech/ngram.py) that the CTC beam search fuses in; `tune_ctc` then
stores the decoding weights in the head.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from speech.ctc import HEAD_FILE, LEXICON_FILE, NGRAM_FILES, build_lexicon, head_metadata, heard_words
from speech.ngram import WordNgram, build_arpa

NGRAM_FILE = NGRAM_FILES[0]  # ngram.npz: the compact form (ARPA would take ~10 s to parse)

_COPY = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
         "generation_config.json")


def _half(src: Path, dst: Path) -> None:
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(src)).items()}
    save_file(tensors, str(dst), metadata={"format": "pt"})


def ship(source: Path, target: Path, ctc_head: Path | None = None, lexicon_from: Path | None = None,
         ngram_from: Path | None = None, ngram_order: int = 4, ngram_min_count: int = 1) -> None:
    if target.exists():
        shutil.rmtree(target)
    (target / "speech-lora").mkdir(parents=True)
    config = json.loads((source / "config.json").read_text())
    config["speechlora_builtin"] = True
    config["torch_dtype"] = "float16"
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for name in _COPY:
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    _half(source / "model.safetensors", target / "model.safetensors")
    _half(source / "speech-lora" / "adapter_model.safetensors", target / "speech-lora" / "adapter_model.safetensors")
    # The LoRA was trained on a folder of the training machine (a graft); the shipped one is its own base.
    lora_config = json.loads((source / "speech-lora" / "adapter_config.json").read_text())
    lora_config["base_model_name_or_path"] = "speechlora/builtin"
    (target / "speech-lora" / "adapter_config.json").write_text(json.dumps(lora_config, indent=2))
    if ctc_head is not None:
        shutil.copy2(ctc_head, target / HEAD_FILE)
    if lexicon_from is not None:
        if ctc_head is None:
            raise SystemExit("error: --lexicon-from needs --ctc-head (the lexicon is spelled in its alphabet)")
        chars = head_metadata(ctc_head)["chars"]
        with open(lexicon_from, encoding="utf-8") as text:
            words = build_lexicon(text, chars)
        (target / LEXICON_FILE).write_text("\n".join(words) + "\n", encoding="utf-8")
    if ngram_from is not None:
        if ctc_head is None:
            raise SystemExit("error: --ngram-from needs --ctc-head (the n-gram is spelled in its alphabet)")
        info = write_ngram(ngram_from, target / NGRAM_FILE, head_metadata(ctc_head)["chars"], ngram_order,
                           ngram_min_count)
        print(f"{target / NGRAM_FILE}: {info}")
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"{target}: {size / 1e6:.1f} MB")


def write_ngram(text_file: Path, path: Path, chars: str, order: int = 4, min_count: int = 1) -> dict:
    """A Kneser-Ney word n-gram on the sentences of `text_file` (one document a line), saved as .npz.

    Why a 4-gram, unpruned: on the dev clips (beam 32, the same weights) it took WER from 15.03 %
    (the trigram, count >= 2, that shipped before) to 14.05 %, and as .npz (15 MB) it loads in
    0.3 s. Pruned to count >= 2 the 4-gram was no better than the trigram (15.13 %).
    """
    import tempfile

    from speech.builtin_recipe.text import sentences

    def words():
        with open(text_file, encoding="utf-8") as f:
            for line in f:
                for sentence in sentences(line.strip()):
                    if found := heard_words(sentence, chars):
                        yield found

    with tempfile.TemporaryDirectory() as tmp:
        arpa = Path(tmp) / "ngram.arpa"
        info = build_arpa(words(), arpa, order=order, min_count=min_count)
        WordNgram.load(arpa).save(path)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, type=Path)
    parser.add_argument("--to", dest="target", required=True, type=Path)
    parser.add_argument("--ctc-head", type=Path, default=None, help="a ctc_head.safetensors to ship with the model")
    parser.add_argument("--lexicon-from", type=Path, default=None, help="text whose words make lexicon.txt")
    parser.add_argument("--ngram-from", type=Path, default=None, help="text (a document a line) for ngram.npz")
    parser.add_argument("--ngram-order", type=int, default=4)
    parser.add_argument("--ngram-min-count", type=int, default=1, help="prune n-grams (order >= 2) seen less often")
    args = parser.parse_args()
    ship(args.source, args.target, args.ctc_head, args.lexicon_from, args.ngram_from, args.ngram_order,
         args.ngram_min_count)


if __name__ == "__main__":
    main()
