"""Generation engines side by side (ask.engine): torch fp32 against the openvino engine (int8, int4) and llama.cpp.

Each row runs in its own process (so its peak RSS is its own) on the same ~800-token RAG prompts (k passages
from the index, or from the starter corpus when there is no index; benchmarks/workload.py), greedy, the same
new-token budget and threads: time to first token, decode tokens/s (after the first token), token agreement with
torch (the share of answers identical to torch's, and the mean length of the common prefix), peak RSS, and the
conversion time (measured in a fresh cache). Openvino rows also report next_token_agreement: given torch's greedy
tokens so far, the share of positions where the converted model picks torch's next token (the real SmolLM2's
parity with torch; tests/test_engine.py checks the same on a tiny model). With --eval N, `ragqa eval` answers/s on
N sampled questions for each engine. Prints one JSON object.

Decode rates of these VMs drift by up to 50 % between runs minutes apart, so the rows run in --rounds interleaved
rounds (round r starts at the r-th engine), and each ratio to llama.cpp is taken within a round and then the median
over rounds (with every round's ratio printed). Every row writes exactly --max-new-tokens (end-of-sequence tokens
are never picked: --natural-length lets answers end), so the rates compare the same lengths: a row that stops
early at 32 tokens decodes on a shorter KV cache than one that writes 64.

    python benchmarks/engine.py [--model smollm2-135m] [--index default] [--adapter adapters/X] [--questions 8]
                                [--threads 2] [--engines torch,openvino-int8,openvino-int4,llama.cpp] [--eval 16]
                                [--rounds 3] [--natural-length]
    python benchmarks/engine.py --quick     # torch, openvino-fp32 and -int8 on 3 prompts, 24 new tokens

llama.cpp runs when llama-cpp-python is importable (it builds from source: a benchmark venv, not the default
install), on the GGUF the registry ships (Q4_1 weights; the torch generator is that GGUF dequantized, so its
next_token_agreement is llama.cpp's arithmetic on the same weights).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workload import LLAMA_CPP_MISSING, ROOT, llama_cpp, peak_rss_mb, prompts, questions, summary

QUICK = {"engines": "torch,openvino-fp32,openvino-int8", "questions": 3, "max_new_tokens": 24, "k": 3, "rounds": 1}
FULL = {"engines": "torch,openvino-int8,openvino-int4,llama.cpp", "questions": 8, "max_new_tokens": 64, "k": 5,
        "rounds": 3}


def worker(args) -> dict:
    """One engine row, in this process: load (and convert when the cache is fresh), warm up, generate."""
    from ragqa.config import load_config

    engine, _, weights = args.worker.partition("-")
    cfg = load_config(None, [f"model.base={args.model}", f"index.name={args.index}",
                             f"ask.max_new_tokens={args.max_new_tokens}",
                             "ask.disclaimer=false", "ask.verify=false", f"ask.threads={args.threads}",
                             "model.device=cpu", f"ask.engine={'openvino' if engine == 'openvino' else 'torch'}",
                             f"ask.engine_weights={weights or 'int8'}"])
    asked = questions(args.questions)
    if engine == "llama.cpp":
        return _llama_cpp(cfg, asked, args)
    from ragqa.answer import Pipeline

    start = time.perf_counter()
    pipe = Pipeline(cfg, adapter=args.adapter)
    load_s = time.perf_counter() - start
    if not args.natural_length:
        # Both engines stop on the generator's eos ids (ragqa/answer.py): an id past the vocabulary never comes.
        pipe.model.generation_config.eos_token_id = [len(pipe.tokenizer) + 1]
    conversion = None
    use_adapter = args.adapter is not None
    if pipe.engine is not None:
        conversion = pipe.engine.variant(use_adapter).conversion_s
    texts = prompts(pipe, asked, args.k)
    pipe._generate([texts[0]], use_adapter, None)  # warm-up (first-call allocations and compilation)
    rows, answers = [], []
    for prompt in texts:
        pieces: list[str] = []
        text, timings = pipe._generate([prompt], use_adapter, pieces.append)[0]
        rows.append(timings)
        answers.append(text)
    result = {"summary": summary(rows), "texts": answers, "load_s": round(load_s, 2),
              "conversion_s": None if conversion is None else round(conversion, 1), "peak_rss_mb": peak_rss_mb()}
    if pipe.engine is not None and not args.no_agreement:  # after peak_rss_mb: torch generates here too
        result["next_token_agreement"] = _next_token_agreement(pipe, texts, use_adapter, args.max_new_tokens)
    if pipe.engine is not None and use_adapter:
        pipe.engine.variant(False)  # converted here, so that --eval's base rows time answers, not a conversion
    return result


def _torch_sequences(model, tokenizer, texts: list[str], n: int) -> list[tuple[int, list[int]]]:
    """Each prompt's ids followed by torch's n greedy tokens without a repetition penalty (so each is the argmax of
    torch's logits), with the prompt's length: what the next-token agreement reads."""
    import torch

    sequences = []
    for prompt in texts:
        enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=n, do_sample=False, repetition_penalty=1.0,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        sequences.append((enc["input_ids"].shape[1], out[0].tolist()))
    return sequences


def _share(sequences: list[tuple[int, list[int]]], logits_of) -> dict:
    """The share of generated positions where argmax(logits_of(sequence)) is torch's token."""
    agree = total = 0
    for width, seq in sequences:
        picked = logits_of(seq)[width - 1:len(seq) - 1].argmax(-1).tolist()
        agree += sum(a == b for a, b in zip(picked, seq[width:], strict=True))
        total += len(seq) - width
    return {"share": round(agree / max(total, 1), 4), "positions": total}


def _next_token_agreement(pipe, texts: list[str], use_adapter: bool, n: int) -> dict:
    """Teacher-forced agreement of the converted model with torch: torch generates n greedy tokens per prompt; the
    converted model reads the same sequence in one pass, and we count the positions where its argmax is torch's
    token. Unlike whole answers, this does not stop counting at the first difference (greedy answers of a 135M
    model part within a few tokens under any weight rounding): fp32 should be 1.0, int8 near it."""
    import numpy as np

    from ragqa.engine import no_telemetry

    with no_telemetry():
        import openvino as ov

    folder = pipe.engine.variant(use_adapter).folder
    compiled = ov.Core().compile_model(str(folder / "openvino_model.xml"), "CPU",
                                       {"INFERENCE_NUM_THREADS": pipe.cfg.ask.threads or 2,
                                        "INFERENCE_PRECISION_HINT": "f32"})
    model = pipe.engine._torch_model(use_adapter)  # the model that was converted (the adapter merged)

    def logits_of(seq):
        return compiled.create_infer_request().infer({
            "input_ids": np.array([seq], dtype=np.int64), "attention_mask": np.ones((1, len(seq)), dtype=np.int64),
            "position_ids": np.arange(len(seq), dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32)})["logits"][0]

    return _share(_torch_sequences(model, pipe.tokenizer, texts, n), logits_of)


def _llama_cpp_agreement(cfg, texts: list[str], n: int) -> dict:
    """The same teacher-forced agreement for llama.cpp on the base GGUF (logits at every position). The torch
    generator is this GGUF dequantized, so llama.cpp computes with exactly its weights: what is left is arithmetic
    (its 8-bit activations). With --adapter, torch runs the base too: llama.cpp has no adapter here."""
    import numpy as np
    from llama_cpp import Llama

    from ragqa.models import load_generator, resolve

    model, tokenizer = load_generator(cfg.model.base, device="cpu")
    sequences = _torch_sequences(model, tokenizer, texts, n)
    llm = Llama(model_path=resolve(cfg.model.base).location, n_ctx=4096, n_threads=cfg.ask.threads,
                logits_all=True, verbose=False)

    def logits_of(seq):
        llm.reset()
        llm.eval(seq)
        return np.asarray(llm.scores[:len(seq)])

    return _share(sequences, logits_of)


def _llama_cpp(cfg, asked: list[str], args) -> dict:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": f"llama-cpp-python is {LLAMA_CPP_MISSING}"}
    from ragqa.answer import Pipeline

    pipe = Pipeline(cfg)  # for the prompts only (the same text; llama.cpp tokenizes it with special tokens)
    texts = prompts(pipe, asked, args.k)
    eos = pipe.model.generation_config.eos_token_id
    never = [] if args.natural_length else (eos if isinstance(eos, list) else [eos])
    del pipe
    result = {"summary": llama_cpp(cfg.model.base, texts, args.max_new_tokens, args.threads, never=never),
              "peak_rss_mb": peak_rss_mb(), "weights": "GGUF Q4_1"}
    if not args.no_agreement:  # after peak_rss_mb: torch generates here too
        result["next_token_agreement"] = _llama_cpp_agreement(cfg, texts, args.max_new_tokens)
    return result


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
               "--set", f"model.base={args.model}",
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


def _row(engine: str, args, env: dict, first_round: bool) -> dict:
    """One engine row in its own process (its peak RSS is its own)."""
    cmd = [sys.executable, __file__, "--worker", engine, "--model", args.model, "--index", args.index,
           "--k", str(args.k), "--questions", str(args.questions), "--max-new-tokens", str(args.max_new_tokens),
           "--threads", str(args.threads)] + (["--adapter", args.adapter] if args.adapter else [])
    cmd += ["--natural-length"] if args.natural_length else []
    cmd += [] if first_round else ["--no-agreement"]  # the agreement is the same every round: measured once
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"took longer than --timeout {args.timeout:g} s"}
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _combine(rows: list[dict]) -> dict:
    """An engine's rounds as one row: the first round's fields (texts, conversion time, agreement), the medians over
    rounds of its time to first token and decode rate, every round's rate, and the largest peak RSS."""
    good = [row for row in rows if "summary" in row]
    if not good:
        return rows[0]
    row = dict(good[0])
    row["summary"] = {**good[0]["summary"],
                      "ttft_s_median": round(statistics.median(g["summary"]["ttft_s_median"] for g in good), 4),
                      "tokens_per_s_median": round(statistics.median(g["summary"]["tokens_per_s_median"]
                                                                     for g in good), 2)}
    row["tokens_per_s_rounds"] = [g["summary"]["tokens_per_s_median"] if "summary" in g else None for g in rows]
    if "peak_rss_mb" in row:
        row["peak_rss_mb"] = max(g["peak_rss_mb"] for g in good)
    return row


def _ratio(rows: list[dict], reference: list[dict]) -> dict:
    """Decode rate over the reference's, within each round (the rows of a round ran minutes apart at most), and
    the median over rounds."""
    per_round = [round(a["summary"]["tokens_per_s_median"] / b["summary"]["tokens_per_s_median"], 2)
                 for a, b in zip(rows, reference, strict=True)
                 if "summary" in a and "summary" in b and b["summary"]["tokens_per_s_median"]]
    return {"median": round(statistics.median(per_round), 2) if per_round else None, "rounds": per_round}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="model.base: a registry name or a model folder")
    ap.add_argument("--index", default="default")
    ap.add_argument("--adapter")
    ap.add_argument("--k", type=int, help=f"passages per prompt (default {FULL['k']}; --quick: {QUICK['k']})")
    ap.add_argument("--questions", type=int, help=f"default {FULL['questions']}; --quick: {QUICK['questions']}")
    ap.add_argument("--max-new-tokens", type=int,
                    help=f"default {FULL['max_new_tokens']}; --quick: {QUICK['max_new_tokens']}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", help=f"default {FULL['engines']}; --quick: {QUICK['engines']}")
    ap.add_argument("--quick", action="store_true",
                    help="SmolLM2's parity with torch (fp32 and int8 rows) in a few minutes on 2 cores: "
                         f"{QUICK['questions']} RAG prompts of {QUICK['k']} passages, {QUICK['max_new_tokens']} "
                         "new tokens; explicit options still win")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one engine row may take (default 1800)")
    ap.add_argument("--rounds", type=int, help=f"interleaved rounds of the engine rows (default {FULL['rounds']}; "
                                                 f"--quick: {QUICK['rounds']})")
    ap.add_argument("--natural-length", action="store_true",
                    help="let answers end at end-of-sequence instead of writing --max-new-tokens each")
    ap.add_argument("--eval", type=int, default=0, help="also time `ragqa eval` on this many sampled questions")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--no-agreement", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from ragqa.models import cache_dir, load_tokenizer

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "torch" not in engines:
        engines.insert(0, "torch")  # the reference of the agreement columns
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8") if f" {f}" in cpu]
    result: dict = {"model": args.model, "k": args.k, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
                    "questions": args.questions, "adapter": args.adapter or "none", "cpu_flags": flags,
                    "load_average": os.getloadavg()[0], "engines": {}}
    with tempfile.TemporaryDirectory() as fresh:
        # A fresh engine cache, so each openvino row measures its conversion; the dequantized generator is shared.
        (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
        (Path(fresh) / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
        env = {**os.environ, "RAGQA_CACHE": fresh, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        rounds: dict[str, list[dict]] = {engine: [] for engine in engines}
        for r in range(args.rounds):
            for engine in engines[r % len(engines):] + engines[:r % len(engines)]:
                rounds[engine].append(_row(engine, args, env, first_round=r == 0))
        for engine, rows in rounds.items():
            result["engines"][engine] = _combine(rows)
        tokenizer = load_tokenizer(args.model)
        reference = result["engines"].get("torch", {})
        for engine, row in result["engines"].items():
            if "texts" in row and "texts" in reference and engine != "torch":
                row["agreement_with_torch"] = _agreement(reference["texts"], row["texts"], tokenizer)
            for name, other in (("decode_vs_torch", "torch"), ("decode_vs_llama_cpp", "llama.cpp")):
                if "summary" in row and "summary" in result["engines"].get(other, {}):
                    row[name] = _ratio(rounds[engine], rounds[other])
        for row in result["engines"].values():  # after the loop: torch's texts are every row's reference
            row.pop("texts", None)
        if args.eval:
            result["eval"] = {engine: _eval_rate(engine, args.eval, args, env)
                              for engine in engines if engine != "llama.cpp"}
    result["targets"] = {"decode_vs_llama_cpp_min": 1.0, "ttft_s_max": 1.0, "eval_answers_per_s_vs_torch_min": 3.0,
                         "next_token_agreement_fp32": 1.0, "next_token_agreement_int8_min": 0.9}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
