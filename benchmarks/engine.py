"""Generation engines side by side (ask.engine): torch fp32 against the openvino engine (int8, int4) and llama.cpp.

Each row runs in its own process (so its peak RSS is its own) on the same ~800-token RAG prompts (k passages
from the index, or from the starter corpus when there is no index), greedy, the same new-token budget and threads:
time to first token, decode tokens/s (after the first token), token agreement with torch (the share of answers
identical to torch's, and the mean length of the common prefix), peak RSS, and the conversion time (measured in a
fresh cache). With --eval N, `ragqa eval` answers/s on N sampled questions for each engine. Prints one JSON object.

    python benchmarks/engine.py [--index default] [--adapter adapters/X] [--questions 8] [--threads 2]
                                [--engines torch,openvino-int8,openvino-int4,llama.cpp] [--eval 16]

llama.cpp runs when llama-cpp-python is importable (it builds from source: a benchmark venv, not the default
install), on the GGUF the registry ships (Q4_1 weights, so its agreement with torch is not reported).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "corpora/starter/qa.jsonl").read_text().splitlines() if line]
    return [r["question"] for r in rows[:: max(1, len(rows) // n)][:n]]


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _prompts(pipe, questions: list[str], k: int) -> list[str]:
    """The prompts `ragqa ask` would build: retrieved passages when the index exists, else k starter passages
    per question (the same size of prompt)."""
    from ragqa.index import index_dir
    from ragqa.passage import Passage

    if (index_dir(pipe.cfg.index.name) / "manifest.json").is_file():
        return [pipe.prompt_for(q, pipe.retrieve(q, "hybrid", k), "hybrid") for q in questions]
    rows = [json.loads(line) for line in (ROOT / "corpora/starter/passages.jsonl").read_text().splitlines() if line]
    passages = [Passage(chunk_id=str(i), doc_id=str(i), title=r.get("title", ""), text=r["text"], score=1.0)
                for i, r in enumerate(rows)]
    return [pipe.prompt_for(q, passages[i * k:(i + 1) * k], "hybrid") for i, q in enumerate(questions)]


def _summary(rows: list[dict]) -> dict:
    return {"ttft_s_median": round(statistics.median(r["ttft_s"] for r in rows), 4),
            "tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in rows), 2),
            "prompt_tokens_mean": round(statistics.mean(r["prompt_tokens"] for r in rows), 1),
            "new_tokens_mean": round(statistics.mean(r["new_tokens"] for r in rows), 1), "n": len(rows)}


def worker(args) -> dict:
    """One engine row, in this process: load (and convert when the cache is fresh), warm up, generate."""
    from ragqa.config import load_config

    engine, _, weights = args.worker.partition("-")
    cfg = load_config(None, [f"index.name={args.index}", f"ask.max_new_tokens={args.max_new_tokens}",
                             "ask.disclaimer=false", "ask.verify=false", f"ask.threads={args.threads}",
                             "model.device=cpu", f"ask.engine={'openvino' if engine == 'openvino' else 'torch'}",
                             f"ask.engine_weights={weights or 'int8'}"])
    questions = _questions(args.questions)
    if engine == "llama.cpp":
        return _llama_cpp(cfg, questions, args)
    from ragqa.answer import Pipeline

    start = time.perf_counter()
    pipe = Pipeline(cfg, adapter=args.adapter)
    load_s = time.perf_counter() - start
    conversion = None
    if pipe.engine is not None:
        conversion = pipe.engine.variant(args.adapter is not None).conversion_s
    prompts = _prompts(pipe, questions, args.k)
    use_adapter = args.adapter is not None
    pipe._generate([prompts[0]], use_adapter, None)  # warm-up (first-call allocations and compilation)
    rows, texts = [], []
    for prompt in prompts:
        pieces: list[str] = []
        text, timings = pipe._generate([prompt], use_adapter, pieces.append)[0]
        rows.append(timings)
        texts.append(text)
    if pipe.engine is not None and use_adapter:
        pipe.engine.variant(False)  # converted here, so that --eval's base rows time answers, not a conversion
    return {"summary": _summary(rows), "texts": texts, "load_s": round(load_s, 2),
            "conversion_s": None if conversion is None else round(conversion, 1), "peak_rss_mb": _peak_rss_mb()}


def _llama_cpp(cfg, questions, args) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (pip install llama-cpp-python builds it from source)"}
    from ragqa.answer import Pipeline
    from ragqa.models import resolve

    pipe = Pipeline(cfg)  # for the prompts only (the same text; llama.cpp tokenizes it with special tokens)
    prompts = _prompts(pipe, questions, args.k)
    del pipe
    llm = Llama(model_path=resolve(cfg.model.base).location, n_ctx=4096, n_threads=args.threads, verbose=False)
    rows = []
    for i, prompt in enumerate([prompts[0], *prompts]):
        start, first, n = time.perf_counter(), None, 0
        for _ in llm.create_completion(prompt, max_tokens=args.max_new_tokens, temperature=0.0, stream=True,
                                       repeat_penalty=1.1):
            first = first if first is not None else time.perf_counter() - start
            n += 1
        total = time.perf_counter() - start
        if i:
            rows.append({"ttft_s": first, "tokens_per_s": (n - 1) / max(total - first, 1e-9), "new_tokens": n,
                         "prompt_tokens": len(llm.tokenize(prompt.encode(), special=True))})
    return {"summary": _summary(rows), "peak_rss_mb": _peak_rss_mb(), "weights": "GGUF Q4_1"}


def _agreement(reference: list[str], texts: list[str], tokenizer) -> dict:
    same = sum(a == b for a, b in zip(reference, texts, strict=True))
    prefixes = []
    for a, b in zip(reference, texts, strict=True):
        x, y = tokenizer(a, add_special_tokens=False)["input_ids"], tokenizer(b, add_special_tokens=False)["input_ids"]
        prefixes.append(next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y))))
    return {"identical_answers": f"{same}/{len(texts)}",
            "common_prefix_tokens_mean": round(statistics.mean(prefixes), 1)}


def _eval_rate(engine: str, n: int, args, env: dict) -> dict:
    """`ragqa eval` on n sampled questions (configurations base,rag, +lora rows with --adapter): answers/s."""
    configs = "base,lora,rag,rag+lora" if args.adapter else "base,rag"
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "ragqa", "eval", "--configs", configs, "--sample", str(n), "--output", out,
               "--index", args.index, "--nli-judge", "none", "--set", f"ask.threads={args.threads}",
               "--set", f"ask.engine={engine.partition('-')[0]}",
               "--set", f"ask.engine_weights={engine.partition('-')[2] or 'int8'}"]
        if args.adapter:
            cmd += ["--adapter", args.adapter, "--exclude-trained"]
        start = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - start
        if res.returncode != 0:
            return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
        answers = sum(1 for line in (Path(out) / "results.jsonl").read_text().splitlines() if line)
    return {"answers": answers, "wall_s": round(wall, 1), "answers_per_s": round(answers / wall, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="default")
    ap.add_argument("--adapter")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default="torch,openvino-int8,openvino-int4,llama.cpp")
    ap.add_argument("--eval", type=int, default=0, help="also time `ragqa eval` on this many sampled questions")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from ragqa.models import cache_dir, load_tokenizer

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "torch" not in engines:
        engines.insert(0, "torch")  # the reference of the agreement columns
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8") if f" {f}" in cpu]
    result: dict = {"k": args.k, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
                    "questions": args.questions, "adapter": args.adapter or "none", "cpu_flags": flags,
                    "load_average": os.getloadavg()[0], "engines": {}}
    with tempfile.TemporaryDirectory() as fresh:
        # A fresh engine cache, so each openvino row measures its conversion; the dequantized generator is shared.
        (Path(fresh) / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
        env = {**os.environ, "RAGQA_CACHE": fresh, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        for engine in engines:
            cmd = [sys.executable, __file__, "--worker", engine, "--index", args.index, "--k", str(args.k),
                   "--questions", str(args.questions), "--max-new-tokens", str(args.max_new_tokens),
                   "--threads", str(args.threads)] + (["--adapter", args.adapter] if args.adapter else [])
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                result["engines"][engine] = {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
                continue
            result["engines"][engine] = json.loads(res.stdout.strip().splitlines()[-1])
        tokenizer = load_tokenizer("smollm2-135m")
        reference = result["engines"].get("torch", {})
        base_speed = reference.get("summary", {}).get("tokens_per_s_median")
        llama = result["engines"].get("llama.cpp", {}).get("summary", {}).get("tokens_per_s_median")
        for engine, row in result["engines"].items():
            if "texts" in row and "texts" in reference and engine != "torch":
                row["agreement_with_torch"] = _agreement(reference["texts"], row["texts"], tokenizer)
            if "summary" in row and base_speed:
                row["decode_vs_torch"] = round(row["summary"]["tokens_per_s_median"] / base_speed, 2)
            if "summary" in row and llama:
                row["decode_vs_llama_cpp"] = round(row["summary"]["tokens_per_s_median"] / llama, 2)
            row.pop("texts", None)
        if args.eval:
            result["eval"] = {engine: _eval_rate(engine, args.eval, args, env)
                              for engine in engines if engine != "llama.cpp"}
    result["targets"] = {"decode_vs_llama_cpp_min": 1.0, "ttft_s_max": 1.0, "eval_answers_per_s_vs_torch_min": 3.0}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
