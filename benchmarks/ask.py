"""Answer latency of `ragqa ask`: time to first token and decode tokens/s, side by side with llama.cpp.

Rows: the base model, base + LoRA adapter (unmerged), the adapter merged into the base, and the base with
ask.quantize=int8, all through the same Pipeline code with k passages in the prompt; plus the same model's
GGUF weights run by llama.cpp (llama-cpp-python) on the same prompts when it is installed. Prints one JSON object.

    python benchmarks/ask.py [--index indexes/default] [--adapter adapters/X] [--k 5] [--questions 8]

Without --adapter, a fresh LoRA adapter with the recipe's rank and target modules is created: its compute
cost is the same as a trained one's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from workload import LLAMA_CPP_MISSING, llama_cpp, prompts, questions, summary


def _fresh_adapter(cfg, out: Path) -> str:
    from peft import LoraConfig, get_peft_model

    from ragqa.models import load_generator

    model, _ = load_generator(cfg.model.base, "cpu")
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules,
                      task_type="CAUSAL_LM", init_lora_weights="gaussian")
    get_peft_model(model, lora).save_pretrained(out)
    return str(out)


def _run_pipeline(pipe, asked, k, use_adapter: bool = True) -> list[dict]:
    pipe.answer(asked[0], k=k, use_adapter=use_adapter)  # warm-up (first-call allocations)
    answers = (pipe.answer(q, k=k, use_adapter=use_adapter) for q in asked)
    return [a.timings for a in answers if not a.abstained]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="default")
    ap.add_argument("--adapter")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()

    import torch

    from ragqa.answer import Pipeline
    from ragqa.config import load_config

    cfg = load_config(None, [f"index.name={args.index}", f"retrieval.k={args.k}",
                             f"ask.max_new_tokens={args.max_new_tokens}", "ask.disclaimer=false",
                             "retrieval.abstain_below=-1"])
    asked = questions(args.questions)
    result: dict = {"k": args.k, "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
                    "device": "cpu", "questions": len(asked)}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or _fresh_adapter(cfg, Path(tmp) / "adapter")
        result["adapter"] = args.adapter or "fresh LoRA (untrained; same compute as a trained one)"
        pipe = Pipeline(cfg, adapter=adapter)
        result["base"] = summary(_run_pipeline(pipe, asked, args.k, use_adapter=False))
        result["adapter_unmerged"] = summary(_run_pipeline(pipe, asked, args.k))
        pipe.model = pipe.model.merge_and_unload()
        pipe.adapter = None
        result["adapter_merged"] = summary(_run_pipeline(pipe, asked, args.k))
        int8 = Pipeline(cfg.model_copy(update={"ask": cfg.ask.model_copy(update={"quantize": "int8"})}))
        result["base_int8"] = summary(_run_pipeline(int8, asked, args.k))
        texts = prompts(pipe, asked, args.k)
    llama = llama_cpp(cfg.model.base, texts, args.max_new_tokens, torch.get_num_threads())
    if llama is None:
        result["llama_cpp"] = LLAMA_CPP_MISSING
    else:
        result["llama_cpp"] = llama
        result["ratio_tokens_per_s_vs_llama_cpp"] = {
            row: round(result[row]["tokens_per_s_median"] / llama["tokens_per_s_median"], 3)
            for row in ("base", "adapter_unmerged", "adapter_merged", "base_int8")
        }
    result["targets"] = {"tokens_per_s_ratio_min": 0.5, "ttft_s_max": 1.5}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
