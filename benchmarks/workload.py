"""What the generation benchmarks (ask.py, engine.py) run and how they summarise it, in one place: the questions,
the RAG prompts `ragqa ask` builds for them, the latency summary, and the same prompts through llama.cpp.

Imported by those scripts (their own folder is first on sys.path when run as `python benchmarks/X.py`); it puts the
repository root on sys.path too, so `ragqa` is this checkout's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
STARTER = ROOT / "corpora" / "starter"


def questions(n: int) -> list[str]:
    """n questions spread over the starter QA set."""
    rows = [json.loads(line) for line in (STARTER / "qa.jsonl").read_text().splitlines() if line]
    return [r["question"] for r in rows[:: max(1, len(rows) // n)][:n]]


def prompts(pipe, asked: list[str], k: int) -> list[str]:
    """The prompts `ragqa ask` would build with the pipeline's retrieval.mode: retrieved passages when the index
    exists, else k starter passages per question (the same size of prompt, so a benchmark runs without an index)."""
    from ragqa.index import index_dir
    from ragqa.passage import Passage

    mode = pipe.cfg.retrieval.mode
    if (index_dir(pipe.cfg.index.name) / "manifest.json").is_file():
        return [pipe.prompt_for(q, pipe.retrieve(q, mode, k), mode) for q in asked]
    rows = [json.loads(line) for line in (STARTER / "passages.jsonl").read_text().splitlines() if line]
    passages = [Passage(chunk_id=str(i), doc_id=str(i), title=r.get("title", ""), text=r["text"], score=1.0)
                for i, r in enumerate(rows)]
    return [pipe.prompt_for(q, passages[(i * k) % len(passages):][:k], mode) for i, q in enumerate(asked)]


def summary(rows: list[dict]) -> dict:
    """Medians of time to first token and decode speed over answers' timings (Answer.timings)."""
    return {"ttft_s_median": round(statistics.median(r["ttft_s"] for r in rows), 4),
            "tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in rows), 2),
            "prompt_tokens_mean": round(statistics.mean(r["prompt_tokens"] for r in rows), 1),
            "new_tokens_mean": round(statistics.mean(r["new_tokens"] for r in rows), 1), "n": len(rows)}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def llama_cpp(model: str, texts: list[str], max_new_tokens: int, threads: int,
              never: list[int] | None = None) -> dict | None:
    """The same prompts through llama.cpp (llama-cpp-python) on the registry model's GGUF, greedy with the same
    repetition penalty, the first one a warm-up: summary() of the rest. None when llama-cpp-python is missing.
    never: token ids it may not pick (the end-of-sequence ids, so every answer writes max_new_tokens; the GGUF
    has the same vocabulary as the transformers weights)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from ragqa.models import resolve

    llm = Llama(model_path=resolve(model).location, n_ctx=4096, n_threads=threads, verbose=False)
    rows = []
    for i, prompt in enumerate([texts[0], *texts]):
        start, first, n = time.perf_counter(), None, 0
        for chunk in llm.create_completion(prompt, max_tokens=max_new_tokens, temperature=0.0, stream=True,
                                           repeat_penalty=1.1,
                                           logit_bias={token: -float("inf") for token in never or []} or None):
            if chunk["choices"][0]["finish_reason"] is not None:
                continue  # the stream's last chunk carries no token, only why it ended
            first = first if first is not None else time.perf_counter() - start
            n += 1
        total = time.perf_counter() - start
        if i:  # skip the warm-up
            rows.append({"ttft_s": first, "tokens_per_s": (n - 1) / max(total - first, 1e-9), "new_tokens": n,
                         "prompt_tokens": len(llm.tokenize(prompt.encode(), special=True))})
    return summary(rows)


LLAMA_CPP_MISSING = "not installed (pip install llama-cpp-python builds it from source)"
