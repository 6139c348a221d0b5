# The README's two commands: `make demo` (the embedded WARM pipeline) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# FULL=1 never shares a work directory with the default demo (each stage would refuse the other's
# configuration anyway)
WORKDIR ?= $(if $(FULL),runs/demo_full,runs/demo)
TEST_ENV := JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8

.PHONY: venv demo calibrate test test-slow test-parity bench bench-peers clean gpu-wheels gpu-bench-smoke gpu-bench test-launch

venv:
	@VENV=$(VENV) EXTRAS=test bash tools/bootstrap.sh

DEMO_GIN := $(if $(FULL),experiments/demo_full.gin,experiments/demo.gin)

demo: venv
	JAX_PLATFORMS=cpu $(PY) -m warm_jax.main --gin_file=$(DEMO_GIN) \
	  --gin.WORKDIR="'$(WORKDIR)'"

# the declared RL-regime calibration on pilot seeds (single RM only; ~10 min): writes
# calibration/<round>.json and .md, to be committed before the regime is adopted
CALIBRATE_WORKDIR ?= runs/calibrate
calibrate: venv
	JAX_PLATFORMS=cpu $(PY) -m warm_jax.main --gin_file=experiments/calibrate.gin \
	  --gin.WORKDIR="'$(CALIBRATE_WORKDIR)'"

# two pytest-xdist workers (tests sharing a pipeline-run fixture share a worker: conftest.py)
TEST_WORKERS ?= 2
test: venv
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadgroup --durations=15 tests

# CPU smoke of WARM from SmolLM2 on HH-RLHF (~5 min, mostly compiling a 30-layer model)
test-slow: venv
	$(TEST_ENV) $(PY) -m pytest -q -m slow tests

# safetensors imports against transformers (PyTorch lives in .venv-peers, kept out of CI):
# regenerate tests/fixtures/hf/ with transformers' outputs, check warm_jax against them, then load
# warm_jax's exports of them in transformers
test-parity: venv
	bash tools/peers_env.sh
	.venv-peers/bin/python tools/make_hf_fixtures.py
	$(TEST_ENV) $(PY) -m pytest -q tests/test_hf.py
	JAX_PLATFORMS=cpu $(PY) tools/check_hf_export.py write .hf_export_check
	.venv-peers/bin/python tools/check_hf_export.py load .hf_export_check

# warm_jax against TRL / PyTorch (RM training) and mergekit (averaging) on this CPU, into
# bench/results.json; the peers live in .venv-peers (python3.11: torch's CPU wheel), not in .venv
bench-peers: venv
	bash tools/peers_env.sh
	$(PY) -m bench.bench_peers
	$(PY) -m bench.table --readme README.md

bench: venv
	JAX_PLATFORMS=cpu $(PY) -m bench.run_all --quick

# wheels the GPU machine lacks (it has no network): ~32 MiB in .whl/gpu_bench (git-ignored)
gpu-wheels: venv
	DEV_PY=$(PY) bash bench/gpu_bench.sh --fetch-wheels

# the GPU benchmark's code with tiny shapes on CPU (< 60 s)
gpu-bench-smoke: venv
	PYTHON=$(PY) bash bench/gpu_bench.sh --cpu-smoke

# on one H100/H200 (<= 6 min; carry .whl/gpu_bench): writes bench/results_gpu.json
gpu-bench:
	bash bench/gpu_bench.sh

# launch/xm_launch.py against the real xmanager, in its own venv (~600 MB; in .venv it would
# downgrade protobuf and python-dateutil); no cloud credentials needed
XM_VENV ?= build/venv-xm
test-launch: venv
	@test -x $(XM_VENV)/bin/python || $(PY) -m venv $(XM_VENV)
	@test -f $(XM_VENV)/.installed || { $(XM_VENV)/bin/python -m pip install -q xmanager pytest jax && touch $(XM_VENV)/.installed; }
	JAX_PLATFORMS=cpu $(XM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_launch_xm.py

clean:
	rm -rf runs .pytest_cache
