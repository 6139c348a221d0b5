#!/usr/bin/env bash
# The peers' environment for `make bench-peers`: PyTorch (CPU build), TRL and mergekit, kept apart
# from the project's venv. Built with the machine's default python3 (3.11: the CPU wheel of
# torch 2.13.0 exists for it; other Pythons pull a multi-GB CUDA build). Idempotent.
set -euo pipefail
PEERS=${PEERS:-.venv-peers}
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-2.13.0}
TRL=${TRL:-1.16.0}
MERGEKIT=${MERGEKIT:-0.1.5}
if [ ! -x "$PEERS/bin/python" ]; then
  "$PYTHON" -m venv "$PEERS"
fi
PIP="$PEERS/bin/python -m pip"
stamp="$PEERS/.peers-$TORCH-$TRL-$MERGEKIT"
if [ -f "$stamp" ]; then
  exit 0
fi
# torch alone first, then the rest with torch pinned, so nothing swaps it for a CUDA build
$PIP install -q "torch==$TORCH"
$PIP install -q "torch==$TORCH" "trl==$TRL" "mergekit==$MERGEKIT" safetensors
$PEERS/bin/python - <<'PY'
import torch, trl, mergekit  # noqa: F401
assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build"
print(f"peers: torch {torch.__version__} (CPU), trl {trl.__version__}")
PY
touch "$stamp"
