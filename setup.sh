#!/usr/bin/env bash
# One-command set-up: Debian tools the tests speak with (when run as root with apt), a virtual
# environment in .venv, torch (kept if already there; the CPU build on machines without a GPU),
# and speechlora with its dev extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES="espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k sox libsndfile1
  asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav fortunes sword-text-web"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing Debian packages (speech synthesis, Asterisk prompts, text corpora)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null
elif ! command -v espeak-ng >/dev/null 2>&1; then
  echo "setup: note: espeak-ng not found; tests that synthesize speech will be skipped." >&2
  echo "       install with: sudo apt-get install $(echo $APT_PACKAGES)" >&2
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip

if python -c "import torch" >/dev/null 2>&1; then
  echo "setup: keeping installed torch $(python -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
  echo "setup: GPU found: installing torch with CUDA from PyPI"
  python -m pip install -q torch
else
  # Never let a plain `torch` requirement pull the multi-GB CUDA build onto a CPU machine:
  # a local CPU wheel (find-links) if one is there, else PyTorch's CPU index.
  echo "setup: no GPU: installing the CPU build of torch"
  python -m pip install -q --no-index --no-deps "torch==2.13.0" 2>/dev/null \
    || python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
    || python -m pip install -q "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
fi

python -m pip install -q -e ".[dev]"
echo "setup: compiling the CTC beam search (numba; once per install, cached on disk)"
python -m speech.ctc_search
echo "setup: done. Try: .venv/bin/speechlora --help"
