#!/usr/bin/env bash
# The built-in model's model-card figures: held-out TTS speech and the Asterisk English test split
# (WER, RTFx at batch 8), pocketsphinx on the same sets, and Asterisk Spanish/French -> English (BLEU).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
D=work/builtin/data
R=${1:-work/builtin/eval}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
speechlora eval --manifest "tts_heldout:test=$D/tts_heldout/test.jsonl" "asterisk_en:test=$D/asterisk_en/test.jsonl" \
    --output-dir "$R/asr" --batch-size 8
python bench/pocketsphinx_eval.py --manifest "tts_heldout:test=$D/tts_heldout/test.jsonl" \
    "asterisk_en:test=$D/asterisk_en/test.jsonl" --output-dir "$R/asr"
speechlora eval score "$R/asr"
speechlora eval --manifest "asterisk_es:test=$D/asterisk_es/test.jsonl" "asterisk_fr:test=$D/asterisk_fr/test.jsonl" \
    --task translate --target-lang en --output-dir "$R/ast" --batch-size 8
speechlora eval score "$R/ast"
