#!/usr/bin/env bash
# The built-in model end to end: text -> tokenizer + LM -> speech corpora -> stage 2 (encoder +
# projector + fresh speech LoRA, LM frozen) -> stage 3 (LoRA + projector on task prompts) ->
# speech/builtin/model (fp16) -> eval (with pocketsphinx beside it). About 2 hours on 2 CPU cores.
#   bash speech/builtin_recipe/run.sh            (from the repository root, after setup.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
W=work/builtin
D=$W/data
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

OMP_NUM_THREADS=1 python -m speech.builtin_recipe.lm --out $W/lm --steps 330 --warmup 30 --eval-every 110 --max-minutes 48 --seed 0
python -m speech.builtin_recipe.data --out $D --jobs 1
python -m speech.finetune.assemble --lm $W/lm --out $W/stage1 --hidden 256 --blocks 4 \
    --manifest $D/tts_flite/train.jsonl --manifest $D/tts_festival/train.jsonl --manifest $D/asterisk_en/train.jsonl
python -m speech.builtin_recipe.ctc --model $W/stage1 --out $W/stage1c --manifest $D/tts_espeak/train.jsonl \
    --manifest $D/tts_flite/train.jsonl --manifest $D/tts_festival/train.jsonl --manifest $D/asterisk_en/train.jsonl \
    --steps 1300 --max-minutes 22
speechlora finetune speech/builtin_recipe/stage2.yaml
python -m speech.builtin_recipe.mix --out $D/stage3/train.jsonl $D/tts_espeak/train.jsonl:5000 \
    $D/tts_flite/train.jsonl:1500 $D/tts_festival/train.jsonl:500 $D/asterisk_en/train.jsonl:x2 \
    $D/asterisk_es/train.jsonl:x4 $D/asterisk_fr/train.jsonl:x4
python -m speech.builtin_recipe.mix --out $D/stage3/dev.jsonl $D/tts_espeak/dev.jsonl:24 \
    $D/asterisk_en/dev.jsonl $D/asterisk_es/dev.jsonl:12
speechlora finetune speech/builtin_recipe/stage3.yaml
python -m speech.builtin_recipe.ship --from $W/stage3/model --to speech/builtin/model
bash speech/builtin_recipe/evaluate.sh
