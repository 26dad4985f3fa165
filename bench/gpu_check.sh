#!/usr/bin/env bash
# The GPU checks in one run: tests/test_cuda.py (the CUDA paths: bf16, SDPA, the token-tree
# scoring, parity with transformers at the real model's shapes, serving, fine-tuning), then
# bench_core.py at the real model's shapes in bf16 beside transformers' own classes.
#
# On a machine with a GPU and this project installed:   bash bench/gpu_check.sh
# Logs go to $OUT (default runs/gpu_check). Speech comes from SPEECHLORA_TEST_SPEECH (default
# .gpu/speech), made beforehand where espeak-ng is: python tests/test_cuda.py --prepare .gpu/speech
# A machine without this project's packages (a lent GPU box with its own torch) gets them from
# wheels in .whl/ (Python 3.12 manylinux wheels fetched with `pip download`), installed to /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .whl ] && ! $PY -c "import speech, soxr, webrtcvad, jiwer" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: wheels in .whl did not install" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
fi
export SPEECHLORA_TEST_SPEECH=$(realpath "${SPEECHLORA_TEST_SPEECH:-.gpu/speech}")
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import torch, transformers, peft, grpc, google.protobuf as pb; print('torch', torch.__version__, \
'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__, \
'| grpcio', grpc.__version__, '| protobuf', pb.__version__)"
    $PY -c "import flash_attn; print('flash-attn', flash_attn.__version__)" 2>/dev/null || echo "flash-attn: not installed (SDPA)"
} 2>&1 | tee "$OUT/env.txt"
[ -d service/_proto ] || $PY -c "from pathlib import Path; from service.protogen import compile_protos; \
compile_protos(Path('protos'), Path('service/_proto'))"

status=0
timeout "${TEST_TIMEOUT:-360}" $PY -m pytest tests/test_cuda.py -v -s -p no:cacheprovider -o addopts="" \
    2>&1 | tee "$OUT/pytest.log" || status=1
timeout "${BENCH_TIMEOUT:-300}" $PY bench/bench_core.py --device cuda --shape real \
    --audio "$SPEECHLORA_TEST_SPEECH/bench.wav" --batches "${BATCHES:-1,8,32}" --repeat 2 ${BENCH_ARGS:-} \
    2>&1 | grep -v 'Loading weights' | tee "$OUT/bench_real.log" || status=1
exit $status
