#!/usr/bin/env bash
# The built-in model end to end: text -> tokenizer + LM (stage 1) -> speech corpora -> stage 2
# (encoder, character CTC) -> stage 3 (projector + fresh speech LoRA on task prompts, encoder and
# LM frozen) -> speech/builtin/model (fp16) -> eval (with pocketsphinx beside it) -> Spanish
# adapter. About 3.5 hours on 2 CPU cores.
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
# stage 2: the encoder learns to hear (character CTC, LM not involved); ~65 min on 2 cores. The CTC
# head is kept (stage2/ctc_head.safetensors) and shipped for joint CTC/attention decoding.
python -m speech.builtin_recipe.ctc --model $W/stage1 --out $W/stage2 --manifest $D/tts_espeak/train.jsonl \
    --manifest $D/tts_flite/train.jsonl --manifest $D/tts_festival/train.jsonl \
    --manifest $D/asterisk_en/train.jsonl --manifest $D/asterisk_en/train.jsonl \
    --manifest $D/asterisk_en/train.jsonl --manifest $D/asterisk_en/train.jsonl \
    --lr 5e-4 --steps 4500 --warmup 150 --max-minutes 50
# stage 3: projector + fresh speech LoRA on task prompts, encoder and LM frozen; ~38 min
python -m speech.builtin_recipe.mix --out $D/stage3/train.jsonl $D/tts_espeak/train.jsonl:20000 \
    $D/tts_flite/train.jsonl:6000 $D/tts_festival/train.jsonl:2000 $D/asterisk_en/train.jsonl:x4 \
    $D/asterisk_es/train.jsonl:x6 $D/asterisk_fr/train.jsonl:x6
python -m speech.builtin_recipe.mix --out $D/stage3/dev.jsonl $D/tts_espeak/dev.jsonl:24 \
    $D/asterisk_en/dev.jsonl $D/asterisk_es/dev.jsonl:12
speechlora finetune speech/builtin_recipe/stage3.yaml
speechlora finetune speech/builtin_recipe/stage3b.yaml   # a second pass at half the lr; ~15 min
python -m speech.builtin_recipe.ship --from $W/stage3b/model --to speech/builtin/model \
    --ctc-head $W/stage2/ctc_head.safetensors
# the head's decoding weight, chosen on dev clips (~10 min)
python -m speech.builtin_recipe.tune_ctc --model speech/builtin/model --manifest $D/tts_espeak/dev.jsonl \
    --manifest $D/asterisk_en/dev.jsonl --clips 160 --write
bash speech/builtin_recipe/evaluate.sh
speechlora finetune speech/builtin_recipe/spanish.yaml
rm -rf speech/builtin/adapters/spanish && cp -r $W/spanish/adapter speech/builtin/adapters/spanish
bash speech/builtin_recipe/evaluate.sh --spanish
