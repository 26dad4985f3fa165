#!/usr/bin/env bash
# Decoder speed of two code revisions side by side: the same model folder, the same clips,
# `speechlora eval` at batch 8 on 2 threads, the full decoder and the LM alone (--ctc-weight 0),
# alternating old/new for ROUNDS rounds. WER must come out equal if a change was meant to keep
# the transcripts; RTFx is the ratio to read.
# With OWN_MODEL=1 each revision decodes with its own speech/builtin/model (a change of the shipped
# decoding settings, which live in the model folder); WER then differs and is the other figure.
#   bash bench/compare_revisions.sh e6976ae [MANIFEST ...]   (default: held-out TTS test200 + Asterisk en test)
set -uo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: bench/compare_revisions.sh OLD_REVISION [MANIFEST ...]}; shift
MANIFESTS=("$@")
[ ${#MANIFESTS[@]} -eq 0 ] && MANIFESTS=("tts_heldout:test=$PWD/work/builtin/data/tts_heldout/test200.jsonl"
                                         "asterisk_en:test=$PWD/work/builtin/data/asterisk_en/test.jsonl")
ROUNDS=${ROUNDS:-2}
MODEL=${MODEL:-$PWD/speech/builtin/model}
PY=$PWD/.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
OUT=$(mktemp -d)
git worktree add -f "$OUT/old" "$OLD" -q || exit 1
trap 'git worktree remove --force "$OUT/old"; rm -rf "$OUT"' EXIT
for round in $(seq "$ROUNDS"); do
  for code in old new; do
    dir=$OUT/old; [ $code = new ] && dir=$PWD
    model=$MODEL; [ "${OWN_MODEL:-0}" = 1 ] && model=$dir/speech/builtin/model
    for w in default 0; do
      extra=(); [ $w = 0 ] && extra=(--ctc-weight 0)
      # run from the checkout: its own speech/ and encoder/ packages come first on sys.path
      (cd "$dir" && "$PY" -m speech.cli eval --model "$model" --model-id "x/$code-w$w" "${extra[@]}" \
          --manifest "${MANIFESTS[@]}" --output-dir "$OUT/$code-$w-r$round" --batch-size 8 --no-progress 2>&1 \
          | grep -E "RTFx = " | grep -v average | sed "s/^/round $round, $code, ctc weight $w: /")
    done
  done
done
