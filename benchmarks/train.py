"""Benchmark `ragqa train` (prints JSON): throughput vs a naive Trainer baseline, qlora vs lora memory, quality.

Side by side in one run, same model, data, effective batch and steps:
  ours      `ragqa train` (length-grouped batches, loss on answer tokens), method lora, in a fresh process
  qlora     the same with method qlora (4-bit NF4 base), in a fresh process (for peak RSS)
  baseline  transformers Trainer + peft, every example padded to max_seq_len, loss on all tokens
Throughput is answer tokens per second of training time (evaluation excluded), over the steps after the first
--warmup (2) of each run: the first steps pay one-off costs (allocator growth, CUDA kernel loading) that would
otherwise weigh on whichever run is shortest. With --rounds N, ours and the baseline run N times each in
alternating order (ours, baseline, baseline, ours, ...) and their throughputs are pooled, so that a machine
whose speed drifts over minutes favours neither. Quality is the validation loss (answer tokens, with RAFT
context) of the adapter vs the base model.

    .venv/bin/python benchmarks/train.py --steps 20            # small: ~10-20 min on 2 busy cores
    .venv/bin/python benchmarks/train.py --steps 12 --rounds 3 # alternating: ~40 min on 2 quiet cores
    .venv/bin/python benchmarks/train.py --steps 20 --recipe   # also times the full default CPU recipe
    python benchmarks/train.py --device cuda --steps 30 --model DIR --data FILE \
        --set train.batch_size=16 --set train.max_seq_len=1024 --set train.context_k=4   # on a GPU (bf16)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "smollm2-135m_lora_cpu.yaml"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_ours(method: str, sets: list[str], out: Path, recipe: Path = RECIPE, warmup: int = 0) -> dict:
    cmd = [sys.executable, "-m", "ragqa", "train", "--config", str(recipe), "--method", method,
           "--output", str(out), *[a for s in sets for a in ("--set", s)]]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{method} run failed: {res.stderr[-2000:]}")
    card = json.loads((out / "ragqa_card.json").read_text())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s][warmup:]
    answer = sum(s["answer_tokens"] for s in steps)
    seconds = sum(s["answer_tokens"] / s["answer_tokens_per_s"] for s in steps)
    m = card["metrics"]
    return {"method": method, "steps": m["steps"], "timed_steps": len(steps), "answer_tokens": answer,
            "train_seconds": round(seconds, 1),
            "answer_tokens_per_s": round(answer / seconds, 2),
            "tokens_per_s": round(sum(s["tokens"] for s in steps) / seconds, 2),
            "val_loss": m["val_loss"], "base_val_loss": m["base_val_loss"], "peak_rss_mb": card["peak_rss_mb"],
            "model_memory_mb": card["model_memory_mb"],
            "peak_cuda_mb": card["peak_cuda_mb"], "process_wall_s": round(wall, 1)}


def run_baseline(sets: list[str], warmup: int = 0) -> dict:
    """transformers Trainer + peft: pad every example to max_seq_len, loss on every (non-pad) token."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from ragqa.config import load_config
    from ragqa.models import load_generator
    from ragqa.train.data import build_data
    from ragqa.train.trainer import Trainer as RagqaTrainer

    from ragqa.models import resolve_device, resolve_dtype

    cfg = load_config(RECIPE, sets)
    t = cfg.train
    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    model, tokenizer = load_generator(cfg.model.base, device=device, dtype=cfg.model.dtype)
    data = build_data(cfg, tokenizer, show_progress=False)
    lc = cfg.lora
    model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                             target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))

    def padded(e):
        n = len(e.input_ids)
        pad = t.max_seq_len - n
        return {"input_ids": e.input_ids + [tokenizer.pad_token_id] * pad, "attention_mask": [1] * n + [0] * pad,
                "labels": e.input_ids + [-100] * pad}

    train_set = [padded(e) for e in data.train]

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}

    consumed: list[int] = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return len(train_set)

        def __getitem__(self, i):
            consumed.append(i)
            return train_set[i]

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=t.batch_size,
                                 gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, max_steps=t.max_steps,
                                 lr_scheduler_type=t.lr_scheduler, warmup_steps=round(t.warmup_ratio * t.max_steps),
                                 weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, seed=t.seed,
                                 logging_steps=10, save_strategy="no", report_to=[], use_cpu=device == "cpu",
                                 bf16=dtype == torch.bfloat16,
                                 dataloader_num_workers=0, disable_tqdm=True)
        marks: dict[int, tuple[float, int]] = {}  # step -> (time, examples fetched) at the warm-up's end and the end

        class Clock(TrainerCallback):
            def on_step_end(self, _args, state, _control, **_kwargs):
                if state.global_step in (warmup, t.max_steps):  # synchronize only here: no stalls in between
                    if device != "cpu":
                        torch.cuda.synchronize()
                    marks[state.global_step] = (time.perf_counter(), len(consumed))

        trainer = Trainer(model=model, args=args, train_dataset=Counting(), data_collator=collate,
                          callbacks=[Clock()])
        if device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        marks[0] = (time.perf_counter(), 0)
        trainer.train()
        (begin, first), (end, last) = marks[warmup], marks[t.max_steps]
        seconds = end - begin  # the same steps as ours: those after the warm-up
    answer = sum(data.train[i].answer_tokens for i in consumed[first:last])
    # Validation loss on answer tokens, measured exactly as ragqa measures it.
    probe = RagqaTrainer(cfg, show_progress=False)
    probe.model, probe.tokenizer, probe.data = model, tokenizer, data
    probe.autocast = dtype == torch.bfloat16 and device != "cpu"  # as Trainer(bf16=True) trained it
    from accelerate import Accelerator

    peak_cuda = round(torch.cuda.max_memory_allocated() / 2**20, 1) if device != "cpu" else None
    probe.accelerator = Accelerator(cpu=device == "cpu")
    val = probe.evaluate()
    return {"method": "baseline (Trainer, pad to max, loss on all tokens)", "steps": t.max_steps,
            "timed_steps": t.max_steps - warmup, "answer_tokens": answer, "train_seconds": round(seconds, 1),
            "answer_tokens_per_s": round(answer / seconds, 2),
            "tokens_per_s_incl_padding": round((last - first) * t.max_seq_len / seconds, 2),
            "val_loss": val,
            "peak_cuda_mb": peak_cuda}


def _baseline_process(sets: list[str], warmup: int, report: dict) -> dict:
    """run_baseline in a fresh process (its own peak memory, no state shared with our runs)."""
    base = subprocess.run([sys.executable, __file__, "--_baseline", "--warmup", str(warmup),
                           *[a for s in sets for a in ("--set", s)]], cwd=ROOT, capture_output=True, text=True)
    if base.returncode != 0:  # keep the runs measured so far
        report["baseline_error"] = base.stderr[-2000:]
        print(json.dumps(report, indent=2))
        raise SystemExit("baseline failed")
    return json.loads(base.stdout.strip().splitlines()[-1])


def _pooled(runs: list[dict]) -> float:
    """Answer tokens per second over several runs: all their timed tokens over all their timed seconds."""
    return round(sum(r["answer_tokens"] for r in runs) / sum(r["train_seconds"] for r in runs), 2)


def _summary(runs: list[dict]) -> dict:
    """One run as it is; several: the first, with the pooled throughput and every run under "rounds"."""
    if len(runs) == 1:
        return runs[0]
    return {**runs[0], "answer_tokens_per_s": _pooled(runs), "rounds": runs}


def ensure_index(workdir: Path) -> str:
    """indexes/default if it exists, else the starter corpus ingested into a temporary index."""
    from ragqa.index import existing_index, index_dir

    if existing_index(index_dir("default")) is not None:
        return "default"
    path = workdir / "index"
    subprocess.run([sys.executable, "-m", "ragqa", "ingest", "--index", str(path)], cwd=ROOT, check=True,
                   capture_output=True)
    return str(path)


def machine(device: str) -> str:
    """What the numbers were taken on, with the 1-minute load average as a quietness check."""
    text = f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at start"
    if device != "cpu":
        import torch

        text += f", {torch.cuda.get_device_name()} (torch {torch.__version__})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each run")
    parser.add_argument("--recipe", action="store_true", help="also run the full default CPU recipe and time it")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra config override")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on cuda)")
    parser.add_argument("--model", help="base model (registry name, folder or hub id); default: the recipe's")
    parser.add_argument("--data", action="append", default=[], help="Q&A file(s); default: the recipe's")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="only lora vs qlora")
    parser.add_argument("--warmup", type=int, default=2,
                        help="optimizer steps left out of every throughput (first-step allocation, CUDA start-up)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run ours and the baseline this many times each, alternating, and pool them")
    parser.add_argument("--_baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args._baseline:
        print(json.dumps(run_baseline(args.sets, args.warmup)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        index = ensure_index(work)
        sets = [f"train.max_steps={args.steps}", f"train.eval_every={args.steps}", f"train.save_every={args.steps}",
                f"index.name={index}", f"model.device={args.device}", *args.sets]
        if args.model:
            sets.append(f"model.base={args.model}")
        if args.data:
            sets.append(f"train.data={json.dumps(args.data)}")
        if args.steps <= args.warmup:
            raise SystemExit(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
        report = {"machine": machine(args.device), "settings": sets, "warmup_steps_excluded": args.warmup}
        # ours and the baseline alternate (ours, baseline, baseline, ours, ...): this VM's speed drifts by
        # ~25 % within minutes, and a fixed order would hand the drift to one side.
        runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
        for r in range(args.rounds):
            for side in (("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")):
                if side == "ours":
                    runs["ours"].append(run_ours("lora", sets, work / f"lora{r}", warmup=args.warmup))
                elif args.baseline:
                    runs["baseline"].append(_baseline_process(sets, args.warmup, report))
        ours = runs["ours"][0]
        qlora = run_ours("qlora", sets, work / "qlora", warmup=args.warmup)
        report.update({
            "ours_lora": _summary(runs["ours"]),
            "ours_qlora": qlora,
            "qlora_over_lora_peak_rss": round(qlora["peak_rss_mb"] / ours["peak_rss_mb"], 3),
            "qlora_over_lora_model_weights": round(qlora["model_memory_mb"] / ours["model_memory_mb"], 3),
            "val_loss_improvement_vs_base": round(1 - ours["val_loss"] / ours["base_val_loss"], 3),
        })
        if ours["peak_cuda_mb"]:
            report["qlora_over_lora_peak_cuda"] = round(qlora["peak_cuda_mb"] / ours["peak_cuda_mb"], 3)
        if args.baseline:
            baseline = runs["baseline"][0]
            report.update({
                "baseline": _summary(runs["baseline"]),
                "speedup_answer_tokens_per_s": round(_pooled(runs["ours"]) / _pooled(runs["baseline"]), 2),
                "speedup_per_round": [round(o["answer_tokens_per_s"] / b["answer_tokens_per_s"], 2)
                                      for o, b in zip(runs["ours"], runs["baseline"], strict=True)],
                "val_loss_no_worse_than_baseline": ours["val_loss"] <= baseline["val_loss"] + 1e-3,
            })
        if args.recipe:
            start = time.perf_counter()
            full = run_ours("lora", [f"index.name={index}", *args.sets], work / "recipe")
            report["default_recipe"] = {**full, "wall_s": round(time.perf_counter() - start, 1), "recipe": str(RECIPE)}
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
