# The README's two commands: `make demo` (the embedded WARM pipeline) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# FULL=1 never shares a work directory with the default demo (each stage would refuse the other's
# configuration anyway)
WORKDIR ?= $(if $(FULL),runs/demo_full,runs/demo)
TEST_ENV := JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8

.PHONY: venv demo test test-slow test-parity bench clean

venv:
	@VENV=$(VENV) EXTRAS=test bash tools/bootstrap.sh

DEMO_GIN := $(if $(FULL),experiments/demo_full.gin,experiments/demo.gin)

demo: venv
	JAX_PLATFORMS=cpu $(PY) -m warm_jax.main --gin_file=$(DEMO_GIN) \
	  --gin.WORKDIR="'$(WORKDIR)'"
	@echo "report: $(WORKDIR)/report.md"

test: venv
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow" tests

# CPU smoke of WARM from SmolLM2 on HH-RLHF (~5 min, mostly compiling a 30-layer model)
test-slow: venv
	$(TEST_ENV) $(PY) -m pytest -q -m slow tests

# safetensors import vs transformers' PyTorch forward: torch is a multi-GB install, kept out of CI
test-parity: venv
	$(PY) -m pip install -q torch transformers
	$(TEST_ENV) $(PY) -m pytest -q -s tests/test_importers.py -k parity

bench: venv
	JAX_PLATFORMS=cpu $(PY) -m bench.run_all --quick

clean:
	rm -rf runs .pytest_cache
