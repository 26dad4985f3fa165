#!/usr/bin/env bash
# The built-in model's model-card figures: held-out TTS speech and the Asterisk English test split
# (WER, RTFx at batch 8), pocketsphinx on the same sets, and Asterisk Spanish/French -> English (BLEU).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
D=work/builtin/data
R=work/builtin/eval
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ "${1:-}" = --spanish ]; then  # the new-language figures: before and after the Spanish adapter
    for adapter in none spanish; do
        extra=(); [ $adapter = spanish ] && extra=(--adapter speech/builtin/adapters/spanish)
        speechlora eval --manifest "asterisk_es:test=$D/asterisk_es/test.jsonl" --lang es "${extra[@]}" \
            --output-dir "$R/es-$adapter/asr" --batch-size 8
        speechlora eval --manifest "asterisk_es:test=$D/asterisk_es/test.jsonl" --task translate --target-lang en \
            "${extra[@]}" --output-dir "$R/es-$adapter/ast" --batch-size 8
        speechlora eval score "$R/es-$adapter/asr"
        speechlora eval score "$R/es-$adapter/ast"
    done
    exit 0
fi
# test200: every 5th of the 1,000 held-out clips (all five unseen voices, 10 minutes of speech),
# so pocketsphinx (about 1 s per clip on one core) fits the same run
awk 'NR%5==1' $D/tts_heldout/test.jsonl > $D/tts_heldout/test200.jsonl
speechlora eval --manifest "tts_heldout:test=$D/tts_heldout/test200.jsonl" "asterisk_en:test=$D/asterisk_en/test.jsonl" \
    --output-dir "$R/asr" --batch-size 8
python bench/pocketsphinx_eval.py --manifest "tts_heldout:test=$D/tts_heldout/test200.jsonl" \
    "asterisk_en:test=$D/asterisk_en/test.jsonl" --output-dir "$R/asr"
speechlora eval score "$R/asr"
speechlora eval --manifest "asterisk_es:test=$D/asterisk_es/test.jsonl" "asterisk_fr:test=$D/asterisk_fr/test.jsonl" \
    --task translate --target-lang en --output-dir "$R/ast" --batch-size 8
speechlora eval score "$R/ast"
