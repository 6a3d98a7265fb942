"""The training loop: LoRA / QLoRA on the generator, atomic checkpoints, exact resume, adapter + card output.

The loop is hand-written over `accelerate` (device placement, data-parallel under `accelerate launch`)
instead of transformers' Trainer because ragqa needs what Trainer does not give: checkpoints written
atomically (temp dir + rename), a checkpoint on Ctrl-C, resume at the exact batch of a length-grouped
epoch, and loss weighted by answer tokens across gradient-accumulation steps.

Under N processes (`accelerate launch`, `ragqa train --launcher accelerate`) process i takes micro-batches
i, i+N, ... of the same order, so one optimizer step sees batch_size x grad_accum x N examples; only the
main process writes checkpoints, the adapter, its card and metrics, and shows progress.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragqa.errors import RagqaError
from ragqa.files import atomic_dir, check_output_dir
from ragqa.adapters import CARD
from ragqa.train.card import plot_curve, write_card
from ragqa.train.checkpoints import STATE_FILE, STATE_JSON, latest_checkpoint  # noqa: F401 - importable from here too
from ragqa.train.checkpoints import (check_checkpoint_root, checkpoint_root, load_checkpoint, resume_signature,
                                     rng_state, save_checkpoint)
from ragqa.train.data import batches_per_epoch, build_data, collate, length_grouped_batches
from ragqa.terminal import printable


@dataclass
class TrainResult:
    output: Path | None
    steps: int
    train_loss: float | None
    val_loss: float | None
    base_val_loss: float | None
    wall_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False


BNB_OPTIMIZERS = {"adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit",
                  "paged_adamw_32bit": "PagedAdamW32bit"}
"""train.optim -> its bitsandbytes class (same defaults as torch's AdamW: betas 0.9/0.999, eps 1e-8)."""


def check_optimizer(name: str, device: str) -> None:
    """Refuse a paged optimizer off CUDA: bitsandbytes pages optimizer state through CUDA unified memory, and on
    other devices it silently falls back to the unpaged optimizer (a warning only), so the recipe would not be
    what it says."""
    if name.startswith("paged_") and not device.startswith("cuda"):
        unpaged = name.removeprefix("paged_").replace("adamw_32bit", "adamw")
        raise RagqaError(f"train.optim={name}: paged optimizers need a CUDA GPU (device is {device}); "
                         f"use train.optim={unpaged} on {device}")


def make_optimizer(name: str, params, *, lr: float, weight_decay: float):
    """The optimizer `train.optim` names, over `params`."""
    if name == "adamw":
        import torch

        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    import bitsandbytes as bnb

    # weight_decay is passed explicitly: bitsandbytes' AdamW defaults to 1e-2, torch's to 0 through ragqa's config.
    return getattr(bnb.optim, BNB_OPTIMIZERS[name])(params, lr=lr, weight_decay=weight_decay)


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024


class Trainer:
    """One training run of `cfg`; `run()` does it all."""

    autocast = False
    """Forward under bf16 autocast: CUDA with bf16 compute (see _forward)."""

    def __init__(self, cfg, *, resume: bool = False, use_cache: bool = True, show_progress: bool = True,
                 trial=None, save_output: bool = True, checkpoints: bool = True, stop_after: int | None = None,
                 retriever=None, overwrite: bool = False):
        self.cfg = cfg
        self.overwrite = overwrite
        """Replace a train.output (and OUTPUT.checkpoints) that ragqa did not write (--overwrite)."""
        self.resume = resume
        self.use_cache = use_cache
        self.show_progress = show_progress
        self.trial = trial
        self.save_output = save_output
        self.checkpoints = checkpoints
        self.stop_after = stop_after
        """Stop (with a checkpoint) after this many optimizer steps: a deterministic interruption for tests."""
        self.retriever = retriever
        self.output = Path(cfg.train.output)
        self.ckpt_root = checkpoint_root(self.output)
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------ setup

    def _setup(self) -> None:
        import torch
        from accelerate import Accelerator

        from ragqa.models import load_tokenizer, resolve_device

        t = self.cfg.train
        device = resolve_device(self.cfg.model.device)
        check_optimizer(t.optim, device)  # before the data and the model load
        self.accelerator = Accelerator(cpu=device == "cpu")
        self.device = str(self.accelerator.device) if device != "cpu" else "cpu"
        torch.manual_seed(t.seed)
        self.tokenizer = load_tokenizer(self.cfg.model.base)
        with self.accelerator.main_process_first():  # the main process tokenizes and caches, the others read
            self.data = build_data(self.cfg, self.tokenizer, use_cache=self.use_cache, retriever=self.retriever,
                                   show_progress=self.show_progress and self.accelerator.is_main_process)
        if not self.data.train:
            raise RagqaError("train.data: no training examples left after the split; "
                             "add data or lower train.val_fraction")
        self.model = self._load_model()
        self.nproc = self.accelerator.num_processes
        self.per_epoch = batches_per_epoch(len(self.data.train), t.batch_size)
        micro_per_step = t.grad_accum * self.nproc
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.per_epoch / micro_per_step))
        if t.method == "none":
            return
        from transformers import get_scheduler

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(t.optim, params, lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = get_scheduler(t.lr_scheduler, self.optimizer,
                                       num_warmup_steps=round(t.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)

    def _load_model(self):
        import torch

        from ragqa.models import load_generator, resolve_dtype

        t, m = self.cfg.train, self.cfg.model
        compute_dtype = resolve_dtype(m.dtype, self.device)
        self.autocast = compute_dtype == torch.bfloat16 and self.device.startswith("cuda")
        quantization = "nf4" if t.method == "qlora" else None
        model, _ = load_generator(m.base, device=self.device, dtype=m.dtype, quantization=quantization)
        if t.method == "none":
            return model
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        from ragqa.train.dropout import use_lora_dropout

        if quantization:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
            _frozen_back_to_bf16(model, compute_dtype)
        elif t.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [tm for tm in self.cfg.lora.target_modules if tm not in names]
        if missing:
            raise RagqaError(f"lora.target_modules: {missing} not in model {m.base} "
                             "(it has e.g. q_proj, v_proj, up_proj)")
        lc = self.cfg.lora
        peft_config = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                 target_modules=list(lc.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, peft_config)
        use_lora_dropout(model)  # the same dropout, one random draw per four elements on CPU (train/dropout.py)
        if self.autocast:  # autocast does the casting: LoRA inputs stay bf16 (see _forward)
            from peft.tuners.tuners_utils import BaseTunerLayer

            for module in model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.cast_input_dtype_enabled = False
        return model

    # ------------------------------------------------------------ loss

    def _micro_loss(self, batch, n_tokens: float):
        """Sum of answer-token losses of a micro-batch divided by the answer tokens of its whole step.

        Logits are computed only for the batch's answer span (see data.collate), not the whole prompt.
        """
        import torch.nn.functional as F

        keep = batch["keep"]
        logits = self._forward(batch)[:, :-1].float()
        labels = batch["labels"][:, -(keep - 1):]
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                   ignore_index=-100, reduction="sum")
        return loss_sum / max(1, n_tokens), loss_sum.detach()

    def _forward(self, batch):
        """Logits of the batch's last `keep` positions.

        A prefix all rows share (`shared` tokens, data.collate) runs once, for the first row, and its keys
        and values are repeated for the others; the rest of every row then attends to them as a KV cache.
        The loss and gradients are those of the plain forward (tests/test_train.py), except that in
        training LoRA dropout draws one mask for the shared prefix instead of one per row (the expected
        gradient is unchanged).

        On CUDA with bf16 compute the forward runs under autocast, as transformers' Trainer does with
        bf16=True, and peft's own cast of every LoRA input to the fp32 of the LoRA weights is switched off
        (_load_model): those casts, their backward and the fp32 sums they caused were a quarter of the GPU
        time of a step (torch.profiler, SmolLM2-135M, batch 16 x 1024, H200).
        """
        import torch

        ids, keep, shared = batch["input_ids"], batch["keep"], batch.get("shared", 0)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext():
            if not shared:
                return self.model(input_ids=ids, logits_to_keep=keep).logits
            from transformers import DynamicCache

            cache = DynamicCache()
            kv = {_cache_argument(self.model): cache}
            self.model(input_ids=ids[:1, :shared], use_cache=True, logits_to_keep=1, **kv)
            cache.batch_repeat_interleave(ids.size(0))
            return self.model(input_ids=ids[:, shared:], use_cache=True, logits_to_keep=keep, **kv).logits

    def _collate(self, chunk):
        t = self.cfg.train
        cpu = self.accelerator.device.type == "cpu"
        # The shared prefix saves compute, which bounds a CPU step; on a GPU its extra forward call cost
        # more kernel launches than it saved (1.6x slower per step, H200), and gradient checkpointing
        # recomputes layers without their KV cache. A GPU gets widths in multiples of 64 instead: a few
        # distinct shapes over a run rather than one per step.
        return collate(chunk, self.tokenizer.pad_token_id, share_prefix=cpu and t.share_prefix
                       and not t.gradient_checkpointing, multiple=1 if cpu else 64)

    def evaluate(self) -> float | None:
        """Token-weighted mean loss on the answer tokens of the validation examples."""
        import torch

        val = self.data.val
        if not val:
            return None
        self.model.eval()
        total, count = 0.0, 0
        order = sorted(range(len(val)), key=lambda i: len(val[i].input_ids))
        bs = self.cfg.train.batch_size
        with torch.no_grad():
            for s in range(0, len(order), bs):
                chunk = [val[i] for i in order[s:s + bs]]
                batch = _to(self._collate(chunk), self.accelerator.device)
                _, loss_sum = self._micro_loss(batch, 1)
                total += float(loss_sum)
                count += sum(e.answer_tokens for e in chunk)
        self.model.train()
        return total / max(1, count)

    # ------------------------------------------------------------ checkpoints (ragqa.train.checkpoints)

    def _save_checkpoint(self, step: int, micro: int, rng: dict | None = None) -> Path | None:
        """Checkpoint after `step` completed steps. `rng`: the random state as that step left it (default: now)."""
        if not self.checkpoints or not self.accelerator.is_main_process:
            return None
        state = {"step": step, "micro": micro, "history": self.history, "signature": self.signature,
                 "total_steps": self.total_steps}
        return save_checkpoint(self.ckpt_root, step, self.accelerator.unwrap_model(self.model), self.optimizer,
                               self.scheduler, state, rng=rng, keep=self.cfg.train.keep_checkpoints)

    def _load_checkpoint(self) -> tuple[int, int]:
        state = load_checkpoint(self.ckpt_root, self.signature, self.accelerator.unwrap_model(self.model),
                                self.optimizer, self.scheduler, device=str(self.accelerator.device))
        self.history = state["history"]
        return state["step"], state["micro"]

    # ------------------------------------------------------------ the loop

    def _batches(self, micro: int):
        """Micro-batches from global position `micro` on, for this process (data-parallel shard)."""
        t = self.cfg.train
        lengths = [len(e.input_ids) for e in self.data.train]
        while True:
            epoch, start = divmod(micro, self.per_epoch)
            batches = length_grouped_batches(lengths, t.batch_size, t.seed, epoch, t.group_by_length)
            for i in range(start, len(batches)):
                if micro % self.nproc == self.accelerator.process_index:
                    yield micro, [self.data.train[j] for j in batches[i]]
                micro += 1

    def run(self) -> TrainResult:
        start = time.perf_counter()
        if self.save_output:
            # A file in the way, a read-only folder or someone else's folder fails now, not after training.
            check_output_dir(self.output, "adapter", (CARD,), overwrite=self.overwrite)
            check_checkpoint_root(self.ckpt_root, self.overwrite)
        self._setup()
        self.signature = resume_signature(self.cfg, self.data, self.nproc)
        if self.cfg.train.method == "none":
            val = self.evaluate()
            self.history.append({"step": 0, "val_loss": val})
            result = TrainResult(None, 0, None, val, val, time.perf_counter() - start, self.history)
            if self.save_output and self.accelerator.is_main_process:
                result.output = self._write_output(result)
            return result
        step, micro = self._load_checkpoint() if self.resume else (0, 0)
        base_val = next((h["val_loss"] for h in self.history if h.get("step") == 0 and "val_loss" in h), None)
        if step == 0:
            base_val = self.evaluate()
            self.history.append({"step": 0, "val_loss": base_val})
        result = self._loop(step, micro, start, base_val)
        if self.save_output and not result.interrupted and self.accelerator.is_main_process:
            result.output = self._write_output(result)
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
        return result

    def _loop(self, step: int, micro: int, start: float, base_val: float | None) -> TrainResult:
        t = self.cfg.train
        self.model.train()
        batches = self._batches(micro)
        writer = self._tb_writer()
        bar = _Bar(self.total_steps, step, enabled=self.show_progress and self.accelerator.is_main_process)
        last_train = next((h["loss"] for h in reversed(self.history) if "loss" in h), None)
        last_val = next((h["val_loss"] for h in reversed(self.history) if h.get("val_loss") is not None), base_val)
        interrupted = False
        # The random state as the last completed step left it: a Ctrl-C in the middle of the next step must not
        # save the state that step's dropout draws have already advanced (the resumed run would draw other masks).
        rng = rng_state()
        # On a GPU, reading a step's loss right away would wait for its kernels and leave the GPU idle
        # while Python prepares the next step: there each record is completed (loss read, logged) one
        # step late, when its kernels are done. Evaluation, checkpoints and the end complete it at once.
        lag = self.accelerator.device.type != "cpu"
        pending = None  # the record whose loss is still a device tensor

        def finish(record: dict) -> float:
            record["loss"] = self._sum_over_processes(float(record["loss"]))[0] / max(1, record["answer_tokens"])
            self._log(writer, record)
            return record["loss"]

        try:
            with bar:
                while step < self.total_steps:
                    rng = rng_state()
                    tick = time.perf_counter()
                    group = [next(batches) for _ in range(t.grad_accum)]
                    n_answer, n_tokens = (round(n) for n in self._sum_over_processes(
                        sum(e.answer_tokens for _, chunk in group for e in chunk),
                        sum(len(e.input_ids) for _, chunk in group for e in chunk)))
                    loss_total = 0.0
                    for i, (_, chunk) in enumerate(group):
                        batch = _to(self._collate(chunk), self.accelerator.device)
                        sync = i == len(group) - 1
                        with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model):
                            # Data parallel averages the processes' gradients: dividing by the step's answer
                            # tokens over all processes / nproc makes the loss token-weighted over the whole step.
                            loss, loss_sum = self._micro_loss(batch, n_answer / self.nproc)
                            self.accelerator.backward(loss)
                        loss_total = loss_total + loss_sum  # a device tensor: reading it would sync
                    self.accelerator.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
                    lr = self.scheduler.get_last_lr()[0]
                    record = {"step": step + 1, "loss": loss_total, "lr": lr, "tokens": n_tokens,
                              "answer_tokens": n_answer}
                    # Weights, step, data position and history advance together (a Ctrl-C checkpoint
                    # taken at any later point of this step is consistent).
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    # Every process has consumed its share of this round of nproc micro-batches.
                    step, micro = step + 1, group[-1][0] - self.accelerator.process_index + self.nproc
                    if pending is not None:
                        last_train, pending = finish(pending), None
                    elapsed = time.perf_counter() - tick
                    record.update(tokens_per_s=n_tokens / elapsed, answer_tokens_per_s=n_answer / elapsed,
                                  epoch=micro / self.per_epoch)
                    self.history.append(record)
                    evaluate = step % t.eval_every == 0 or step == self.total_steps
                    save = step % t.save_every == 0 and step < self.total_steps
                    stop = self.stop_after is not None and step >= self.stop_after and step < self.total_steps
                    if evaluate:
                        last_val = record["val_loss"] = self.evaluate()
                        self._report_trial(step, last_val)
                    if lag and not (evaluate or save or stop):
                        pending = record
                    else:
                        last_train = finish(record)
                    bar.update(step, last_train, lr, n_tokens / elapsed, last_val)
                    if save:
                        self._save_checkpoint(step, micro)
                    if stop:
                        self._save_checkpoint(step, micro)
                        interrupted = True
                        break
        except KeyboardInterrupt:
            if pending is not None:
                finish(pending)
            if step > 0 and self.checkpoints:
                path = self._save_checkpoint(step, micro, rng)
                if path:
                    print(printable(f"interrupted: checkpoint saved to {path}; continue with --resume"),
                          file=sys.stderr)
            raise
        finally:
            if writer is not None:
                writer.close()
        return TrainResult(None, step, last_train, last_val, base_val, time.perf_counter() - start,
                           self.history, interrupted)

    def _sum_over_processes(self, *values: float) -> list[float]:
        """Each value summed over the data-parallel processes (unchanged in a single process)."""
        import torch

        if self.nproc == 1:
            return [float(v) for v in values]  # no device round trip (a GPU sync) per step
        local = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(local, reduction="sum").tolist()

    def _report_trial(self, step: int, val: float | None) -> None:
        if self.trial is None or val is None:
            return
        import optuna

        self.trial.report(val, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned()

    def _tb_writer(self):
        if not self.save_output or not self.accelerator.is_main_process:
            return None
        from torch.utils.tensorboard import SummaryWriter

        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        return SummaryWriter(log_dir=str(self.ckpt_root / "tensorboard"))

    def _log(self, writer, record: dict[str, Any]) -> None:
        if writer is None:
            return
        for key in ("loss", "lr", "tokens_per_s", "val_loss"):
            if record.get(key) is not None:
                writer.add_scalar(f"train/{key}" if key != "val_loss" else "val/loss", record[key], record["step"])
        writer.flush()

    # ------------------------------------------------------------ output

    def _write_output(self, result: TrainResult) -> Path:
        """Adapter + card + metrics + curve + README into a temp dir, then renamed into place."""
        from ragqa import __version__
        from ragqa.models import generator_dir
        from ragqa.prompt import TEMPLATE_VERSION

        with atomic_dir(self.output) as tmp:
            if self.cfg.train.method != "none":
                model = self.accelerator.unwrap_model(self.model)
                model.save_pretrained(str(tmp), safe_serialization=True)
            with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as fh:
                for record in self.history:
                    fh.write(json.dumps(record) + "\n")
            tb = self.ckpt_root / "tensorboard"
            if tb.is_dir():
                shutil.copytree(tb, tmp / "tensorboard")
            plot_curve(self.history, tmp / "loss_curve.png")
            gold_rate = (sum(e.gold_in_context for e in self.data.train) / len(self.data.train)
                         if self.data.train else None)
            import torch

            card = {
                "ragqa_version": __version__,
                "base_model": self.cfg.model.base,
                "base_model_location": generator_dir(self.cfg.model.base),
                "method": self.cfg.train.method,
                "optimizer": self.cfg.train.optim if self.cfg.train.method != "none" else None,
                "template_version": TEMPLATE_VERSION,
                "config": self.cfg.to_dict(),
                "data_hashes": self.data.data_hashes,
                "data_cache_key": self.data.cache_key,
                "split": self.data.split,
                "val_ids_scored": [e.id for e in self.data.val],
                "raft_gold_rate": gold_rate,
                "metrics": {"train_loss": result.train_loss, "val_loss": result.val_loss,
                            "base_val_loss": result.base_val_loss, "steps": result.steps,
                            "train_examples": len(self.data.train), "val_examples": len(self.data.val)},
                "wall_time_s": round(result.wall_s, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "model_memory_mb": round(self.accelerator.unwrap_model(self.model).get_memory_footprint() / 2**20, 1),
                "peak_cuda_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                 if torch.cuda.is_available() else None),
                "device": self.device,
                "processes": self.nproc,
            }
            write_card(tmp, card)
        return self.output


def _cache_argument(model) -> str:
    """The name of the model's KV-cache argument: transformers 5.24 renamed `past_key_values` to `cache`."""
    base = getattr(model, "module", model)  # under data parallel
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return _cache_argument_of(type(base))


@functools.cache
def _cache_argument_of(model_class) -> str:
    # Read once per class, not on every micro-batch.
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _frozen_back_to_bf16(model, compute_dtype) -> None:
    """With bf16 compute, put the frozen weights that prepare_model_for_kbit_training upcast back in bf16.

    peft upcasts every non-4-bit weight (embeddings, norms, LM head, biases) to fp32, a guard meant for fp16.
    With bf16 it doubles their memory and makes every activation fp32: QLoRA then took 1.9x the peak GPU
    memory of LoRA (SmolLM2-135M on an H200). They are frozen, so no optimizer precision is at stake, and
    the RMS norms compute in fp32 internally anyway. fp32 compute (the CPU recipes) is left as it is.
    """
    import torch

    if compute_dtype != torch.bfloat16:
        return
    for param in model.parameters():
        if not param.requires_grad and param.dtype == torch.float32:
            param.data = param.data.to(torch.bfloat16)


def _to(batch: dict[str, Any], device) -> dict[str, Any]:
    """The batch on `device`. To a GPU through pinned memory without blocking: a plain copy from pageable
    memory waits for every kernel already queued, so Python could not prepare the next step meanwhile."""
    import torch

    cuda = torch.device(device).type == "cuda"

    def move(v):
        return v.pin_memory().to(device, non_blocking=True) if cuda else v.to(device)

    return {k: move(v) if hasattr(v, "to") else v for k, v in batch.items()}


class _Bar:
    """rich progress bar: step, loss, lr, tokens/s, validation loss, ETA."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s  "
                       "val {task.fields[val]}"),
            TimeRemainingColumn(), transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=done, loss="-", lr="-", tps="-", val="-")

    def __enter__(self):
        if self.enabled:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)

    def update(self, step: int, loss: float | None, lr: float, tps: float, val: float | None) -> None:
        if self.enabled:
            self.progress.update(self.task, completed=step, loss="-" if loss is None else f"{loss:.3f}",
                                 lr=f"{lr:.2e}", tps=f"{tps:.0f}",
                                 val="-" if val is None else f"{val:.3f}")


def train(cfg, **kwargs) -> TrainResult:
    """Run one training job of `cfg` (see Trainer for the keyword options)."""
    return Trainer(cfg, **kwargs).run()
