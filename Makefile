# Two commands do everything: `make demo` (set up, then run the main job on the built-in
# default) and `make test` (set up, then run the tests; this is what CI runs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU build of torch, installed first: a bare `torch` requirement pulls a multi-GB CUDA build.
# On a machine with torch preinstalled: make TORCH_SPEC= VENV_FLAGS=--system-site-packages
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?=

.PHONY: install system-deps demo test test-isa gate bench compare compare-st-openvino cpu-report train eval clean

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/pip install -q $(TORCH_SPEC))
	$(BIN)/pip install -q -e '.[test,serve,nearline,train,scale]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/postemb demo

# Debian packages the tests need: redis-server (the near-line tests start their own on loopback).
system-deps:
	@command -v redis-server >/dev/null || (apt-get update -q && apt-get install -y -q redis-server)

# The throughput gate first (the machine is at its quietest before the suite), then test-isa, then the
# suite (benchmarks run as quick tests here: one round, 200 posts, no timing assertions), whose
# summary line closes the log.
test: $(STAMP) system-deps
	$(BIN)/python benchmarks/throughput_gate.py --json $(GATE_JSON)
	$(BIN)/python -m tests.isa_emulation
	POSTEMB_BENCH_N=200 $(BIN)/python -m pytest -q -p no:cacheprovider tests benchmarks --benchmark-disable

# The backend, precision and kernel tests again with oneDNN, MKL, ATen and our pooling kernel held to
# AVX2, then to AVX-512 without BF16/VNNI, then to AVX-512 with VNNI (tests/isa_emulation.py says what is
# and is not held).
test-isa: $(STAMP)
	$(BIN)/python -m tests.isa_emulation

# Ratios of our `auto` and fastest faithful paths to sentence-transformers fp32, in one process;
# fails below the floors in benchmarks/throughput_gate.py. Under 2 minutes on 2 cores.
GATE_JSON ?= .benchmarks/throughput_gate.json
gate: $(STAMP)
	$(BIN)/python benchmarks/throughput_gate.py --json $(GATE_JSON)

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-columns=median,ops,rounds

compare: $(STAMP)
	$(BIN)/python benchmarks/compare.py --long 1000

# sentence-transformers on its own OpenVINO backend, beside our rows, in one run. That backend needs
# optimum-intel, which caps transformers below the project's (2.2.0: < 5.6), so it gets a side
# environment and the project's stays as it is. optimum-intel lists torchvision, which this model
# never imports and whose PyPI build does not load beside the CPU torch: TORCH_SPEC in the same
# install keeps pip from taking a newer torchvision with the CUDA torch it needs, and it is removed again.
ST_OV_VENV := .venv-st-openvino
$(ST_OV_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV_FLAGS) $(ST_OV_VENV)
	$(ST_OV_VENV)/bin/pip install -q --upgrade pip
	$(ST_OV_VENV)/bin/pip install -q -e . $(TORCH_SPEC) pytest sentence-transformers 'optimum-intel[openvino]>=2.2'
	$(ST_OV_VENV)/bin/pip uninstall -q -y torchvision
	touch $@

compare-st-openvino: $(ST_OV_VENV)/.installed
	$(ST_OV_VENV)/bin/python benchmarks/compare.py --long 500 --providers st-openvino

# Every CPU measurement of issue 27 on this machine (gate, encode tables, profiles, server, batcher,
# near-line, backfill), one after another into one log: benchmarks/cpu_report.sh. 23 minutes on
# an idle 2-core Zen 4.
cpu-report: $(STAMP) $(ST_OV_VENV)/.installed system-deps
	bash benchmarks/cpu_report.sh

# The shipped model's recipe (writes ../runs/multitask; copy it into postemb_rt/models/default/)
train: $(STAMP)
	$(BIN)/postemb train --config configs/v4/steps1600/light_prefixes.json --out ../runs/multitask

eval: $(STAMP)
	$(BIN)/postemb eval --model default --out reports/

clean:
	rm -rf $(VENV) $(ST_OV_VENV) build *.egg-info postemb_rt/_C*.so
