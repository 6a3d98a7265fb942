"""Train the cross-encoder reranker (`ragqa rerank train`) on each training question's gold passage and hard
negatives mined from the index.

Loss (rerank.loss):
- softmax (default): listwise. Per question, a softmax over the logits of its gold passage and its hard negatives,
  the cross-entropy of the gold one (the InfoNCE the query encoder trains with).
- bce: pointwise binary cross-entropy of each (question, passage, 1/0) pair. Measured on MedQuAD: it stays at the
  class prior at the scale a 2-core machine trains (README, Rerank).
The fresh one-logit head (`classifier`) learns at rerank.head_lr, the encoder at rerank.lr: with both at 5e-5 the
random head hardly moves in the few hundred steps a CPU run has, and nothing is learned.

The cross-encoder is trained alone. With rerank.first_stage_temperature T (stored in the card), inference ranks the
first stage's candidates by its logit + the passage's dense cosine / T (ragqa.rerank.model.Reranker.rank_logits):
two log-odds-like scores of two different readers, summed. The card's validation metrics give the first stage,
the reranked ranking, and the cross-encoder alone.

The questions and their train/validation split are the train section's (train.data, split_by, val_fraction,
seed: the RAFT recipe's document-disjoint split), so the reranker never sees a validation question. The result is
a folder with safetensors weights and a `reranker.json` card (data hashes, split, pair counts, recipe,
first-stage vs reranked validation metrics, the relevance abstention calibration of ragqa.rerank.calibrate),
written atomically.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ragqa import __version__
from ragqa.errors import RagqaError, first_line
from ragqa.files import atomic_dir, check_writable_dir, recover, temp_prefix
from ragqa.passage import search_mode
from ragqa.rerank.registry import CARD


TEMPERATURES = (0.02, 0.03, 0.04, 0.05, 0.07, 0.1)
"""The first_stage_temperature candidates fitted on the dev questions (rerank.dev_fraction > 0)."""


def ranked(passages, scores) -> list[str]:
    """Doc ids by descending score; stable: ties keep the first-stage order, as Retriever._rerank does."""
    return [passages[i].doc_id for i in sorted(range(len(passages)), key=lambda i: -float(scores[i]))]


def fit_first_stage_temperature(retriever, reranker, rows: Sequence, mode: str, candidates: int,
                                grid: Sequence[float] = TEMPERATURES) -> tuple[float, dict]:
    """(T, metrics per T): the first_stage_temperature among `grid` whose ranking of the rows' first `candidates`
    results (logit + dense cosine / T) has the best MRR@10, then recall@1 (ties: the larger T, nearer the cross-
    encoder), scored on rows the cross-encoder was not trained on (the dev questions); one forward per question."""
    import numpy as np

    from ragqa.evaluate.retrieval import rank_metrics
    from ragqa.rerank.model import passage_text

    lists = []
    for row in rows:
        if not row.gold_ids:
            continue
        passages = retriever.retrieve(row.question, k=candidates, mode=mode)
        if passages:
            logits = reranker.logits([(row.question, passage_text(p)) for p in passages]).astype(np.float64)
            lists.append((row, passages, logits, np.array([p.scores.get("dense", 0.0) for p in passages])))
    if not lists:
        raise RagqaError("rerank.dev_fraction: no dev question has a gold passage to fit first_stage_temperature on")
    table: dict = {}
    for temperature in grid:
        totals: Counter = Counter()
        for row, passages, logits, cosines in lists:
            totals.update(rank_metrics(ranked(passages, logits + cosines / temperature), row.gold_ids, ks=(1, 3, 5)))
        table[str(temperature)] = {"n": len(lists), **{k: round(v / len(lists), 4) for k, v in sorted(totals.items())}}
    best = max(grid, key=lambda x: (table[str(x)]["mrr@10"], table[str(x)]["recall@1"], x))
    return float(best), table


def ranking_metrics(retriever, rows: Sequence, mode: str, candidates: int, reranker=None,
                    alone: dict | None = None) -> dict:
    """Mean recall@1, recall@3, recall@5 and MRR@10 of the gold documents in the first `candidates` results, as
    retrieved or reranked by `reranker` (a ragqa.rerank Reranker, ranking as the Retriever does); rows are QARows
    with gold ids. With a reranker that adds the first stage's cosine, `alone` (a dict) receives the metrics of
    its cross-encoder alone, from the same logits."""
    import numpy as np

    from ragqa.evaluate.retrieval import rank_metrics
    from ragqa.rerank.model import passage_text

    scored = [row for row in rows if row.gold_ids]
    if not scored:
        return {}
    totals: Counter = Counter()
    totals_alone: Counter = Counter()

    for row in scored:
        passages = retriever.retrieve(row.question, k=candidates, mode=mode)
        ids = [p.doc_id for p in passages]
        if reranker is not None and passages:
            logits = reranker.logits([(row.question, passage_text(p)) for p in passages])
            temperature = reranker.first_stage_temperature
            if temperature is not None:
                totals_alone.update(rank_metrics(ranked(passages, logits), row.gold_ids, ks=(1, 3, 5)))
                logits = logits + np.array([p.scores.get("dense", 0.0) for p in passages]) / temperature
            ids = ranked(passages, logits)
        totals.update(rank_metrics(ids, row.gold_ids, ks=(1, 3, 5)))
    if alone is not None and totals_alone:
        alone.update({"n": len(scored),
                      **{name: round(total / len(scored), 4) for name, total in sorted(totals_alone.items())}})
    return {"n": len(scored), **{name: round(total / len(scored), 4) for name, total in sorted(totals.items())}}


def _dataset(pairs, listwise: bool):
    """Pointwise: (question, passage, label) rows. Listwise: one row per question (pairs are consecutive per
    question): query, docs and labels."""
    from datasets import Dataset

    if not listwise:
        return Dataset.from_dict({"question": [p.question for p in pairs], "passage": [p.passage for p in pairs],
                                  "label": [p.label for p in pairs]})
    lists: dict[str, list] = {}
    for p in pairs:
        lists.setdefault(p.row_id, []).append(p)
    rows = [group for group in lists.values() if len(group) > 1]  # a lone gold passage teaches a softmax nothing
    return Dataset.from_dict({"query": [g[0].question for g in rows], "docs": [[p.passage for p in g] for g in rows],
                              "labels": [[p.label for p in g] for g in rows]})


def softmax_loss(model, teacher: dict | None = None, distill_weight: float = 0.0):
    """The listwise loss (module docstring): inputs (queries, docs lists), labels lists. With `teacher` (the
    teacher's logit of every training (question, passage) pair), (1 - distill_weight) x that loss +
    distill_weight x KL(teacher's softmax over the list || the model's)."""
    import torch
    from sentence_transformers.util import batch_to_device

    class ListSoftmaxLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inputs, labels, prompt=None, task=None):
            queries, docs = inputs
            pairs = [(q, d) for q, ds in zip(queries, docs, strict=True) for d in ds]
            features = batch_to_device(self.model.preprocess(pairs, prompt=prompt, task=task), self.model.device)
            logits = self.model(features)["scores"].view(-1).float()
            losses, start = [], 0
            for label in labels:
                scores = logits[start : start + len(label)]
                listed = pairs[start : start + len(label)]
                start += len(label)
                target = torch.as_tensor(label, dtype=torch.float32, device=scores.device)
                log_p = torch.log_softmax(scores, dim=0)
                loss = -(log_p * target).sum() / target.sum()
                if teacher is not None:
                    wanted = torch.tensor([teacher[pair] for pair in listed], dtype=torch.float32,
                                          device=scores.device)
                    kl = torch.nn.functional.kl_div(log_p, torch.log_softmax(wanted, dim=0), reduction="sum",
                                                    log_target=True)
                    loss = (1 - distill_weight) * loss + distill_weight * kl
                losses.append(loss)
            return torch.stack(losses).mean()

    return ListSoftmaxLoss()


def kept_layers(total: int, keep: int) -> list[int]:
    """The first `keep` of `total` layer indices: dropping the top layers (Sajjad et al., "Poor Man's BERT")
    leaves the kept ones reading what they were trained on. Measured on MedQuAD, 6 -> 3 layers of the trained
    reranker: evenly spaced [0, 2, 5] then one epoch of distillation ranked worse than the first stage alone."""
    return list(range(min(keep, total)))


def shrink(hf_model, keep: int) -> list[int]:
    """Keep `keep` of a BERT-style encoder's layers in place (rerank.layers); returns the kept indices."""
    import torch

    encoder = getattr(getattr(hf_model, hf_model.base_model_prefix, hf_model), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise RagqaError(f"rerank.layers: {type(hf_model).__name__} has no encoder.layer list to shrink; leave "
                         "rerank.layers unset")
    kept = kept_layers(len(layers), keep)
    encoder.layer = torch.nn.ModuleList(layers[i] for i in kept)
    hf_model.config.num_hidden_layers = len(kept)
    return kept


def teacher_logits(name: str, pairs, device: str) -> dict:
    """The teacher reranker's logit of every (question, passage) training pair (rerank.teacher), in one pass."""
    from ragqa.rerank.model import load_reranker

    teacher = load_reranker(name, device=device, backend="torch")
    keys = list(dict.fromkeys((p.question, p.passage) for p in pairs))
    return dict(zip(keys, (float(x) for x in teacher.logits(keys)), strict=True))


def _optimizer(model, lr: float, head_lr: float, weight_decay: float):
    """AdamW with the fresh one-logit head (`classifier`) at head_lr and the rest (encoder and the pretrained
    pooler) at lr."""
    import torch

    head = {name for name, _ in model.named_parameters() if name.startswith("classifier.")}
    groups = [{"params": [p for n, p in model.named_parameters() if n not in head], "lr": lr},
              {"params": [p for n, p in model.named_parameters() if n in head], "lr": head_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay)


def _check_output(target: Path) -> None:
    """Replace only a folder ragqa wrote (a reranker card in it) or an empty one; never someone else's files.
    What a killed run left beside it (its half-written folder, its trainer's scratch) is removed first."""
    check_writable_dir(target)
    recover(target)
    if target.is_dir() and any(target.iterdir()) and not (target / CARD).is_file():
        raise RagqaError(f"--output {target} holds files that are not a ragqa reranker (no {CARD}): choose an "
                         "empty or new folder")


def train_reranker(cfg, console=None) -> Path:
    """Train per `cfg.rerank` on the training questions of `cfg.train`; return the reranker folder."""
    from rich.console import Console

    from ragqa.models import resolve, resolve_device
    from ragqa.rerank.pairs import mine_pairs
    from ragqa.retrieve import Retriever
    from ragqa.qa import load_train_qa as load_qa
    from ragqa.qa import split_rows

    console = console or Console(stderr=True)
    r, t = cfg.rerank, cfg.train
    target = Path(r.output)
    _check_output(target)
    if r.teacher:  # an unknown name fails here, not after mining pairs and loading the base
        from ragqa.rerank.model import reranker_location

        reranker_location(r.teacher)
    t0 = time.time()
    rows, hashes = load_qa(t.data)
    train_rows, val_rows = split_rows(rows, t.val_fraction, t.seed, by=t.split_by)
    split_by = t.split_by if t.split_by != "auto" else ("document" if all(row.group for row in rows) else "question")
    dev_rows: list = []
    if r.dev_fraction:  # held out of training, split as validation is: to fit T and calibrate abstention on
        fit_rows, dev_rows = split_rows(train_rows, r.dev_fraction, r.seed, by=split_by)
    else:
        fit_rows = train_rows
    used = list(fit_rows)
    if r.max_questions and r.max_questions < len(used):
        used = sorted(random.Random(r.seed).sample(used, r.max_questions), key=lambda row: row.id)
    mode = search_mode(cfg.retrieval.mode)
    retriever = Retriever.from_config(cfg)
    pairs, skipped = mine_pairs(retriever, used, negatives=r.negatives, same_document=r.same_document_negatives,
                                candidates=r.candidates, mode=mode, seed=r.seed)
    if not pairs:
        raise RagqaError(f"train.data {', '.join(t.data)}: no training question has a gold passage in index "
                         f"{retriever.path} (gold_passage_ids must name passages of the index)")
    kinds = Counter(p.kind for p in pairs)
    console.print(f"reranker data: {kinds['gold']} training questions ({skipped} without a gold passage), "
                  f"{len(pairs) - kinds['gold']} hard negatives; {len(val_rows)} validation questions left out; "
                  f"loss {r.loss}")

    import torch
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import set_seed

    from ragqa.judge.train import length_grouped_sampler
    from ragqa.rerank.model import Reranker

    listwise = r.loss == "softmax"
    temperature = r.first_stage_temperature
    # batch_size counts pairs either way: a listwise batch takes as many questions' lists as fit in it
    per_batch = max(1, r.batch_size // (1 + r.negatives)) if listwise else r.batch_size
    device = resolve_device(cfg.model.device)
    base = resolve(r.base)
    set_seed(r.seed)  # the one-logit head is initialised at random
    try:
        model = CrossEncoder(base.location, num_labels=1, max_length=r.max_length, device=device,
                             trust_remote_code=False, local_files_only=base.source != "hub",
                             model_kwargs={"use_safetensors": True})
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise RagqaError(f"rerank.base '{r.base}': {first}") from None
    if model.num_labels != 1:
        raise RagqaError(f"rerank.base '{r.base}' has {model.num_labels} output labels; start from an encoder "
                         "(minilm) or a one-logit cross-encoder")
    base_layers = model.model.config.num_hidden_layers
    kept = shrink(model.model, r.layers) if r.layers else None
    teacher = teacher_logits(r.teacher, pairs, device) if r.teacher else None  # the config ensures a listwise loss
    if kept is not None or teacher is not None:
        console.print(f"reranker: {len(kept) if kept else 'all'} layers{f' (kept {kept})' if kept else ''}"
                      f"{f', distilling {r.teacher} at weight {r.distill_weight}' if teacher else ''}")

    with atomic_dir(target) as tmp:  # created before training: a read-only or full folder fails early
        # named like atomic_dir's temp folder, so that `recover` removes it after a kill (SIGTERM skips cleanup)
        with tempfile.TemporaryDirectory(prefix=temp_prefix(target), dir=target.parent) as scratch:
            args = CrossEncoderTrainingArguments(
                output_dir=scratch, num_train_epochs=r.epochs, max_steps=r.max_steps or -1,
                per_device_train_batch_size=per_batch, learning_rate=r.lr, warmup_steps=0.1, weight_decay=0.01,
                seed=r.seed, data_seed=r.seed, save_strategy="no", eval_strategy="no", report_to="none",
                logging_steps=50, use_cpu=device == "cpu",
                bf16=device.startswith("cuda") and torch.cuda.is_bf16_supported(),
                dataloader_num_workers=0, disable_tqdm=False,
                # pointwise pairs of similar length together; a listwise row is a whole question's list
                **({} if listwise else {"batch_sampler": length_grouped_sampler()}),
            )
            loss = softmax_loss(model, teacher, r.distill_weight) if listwise else BinaryCrossEntropyLoss(model)
            optimizer = _optimizer(model.model, r.lr, r.head_lr or r.lr, args.weight_decay)
            trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=_dataset(pairs, listwise), loss=loss,
                                          optimizers=(optimizer, None))
            result = trainer.train()
        model.eval()
        model.save(str(tmp), create_model_card=False, safe_serialization=True)
        n = cfg.retrieval.rerank_candidates
        dev: dict = {}
        if dev_rows:
            temperature, table = fit_first_stage_temperature(retriever, Reranker(model, target.name, "torch"),
                                                             dev_rows, mode, n)
            dev = {"fitted": "first_stage_temperature: the best MRR@10 of the reranked dev questions",
                   "first_stage_temperature": temperature, "by_temperature": table}
        metrics = {}
        if r.eval_questions and val_rows:
            held = [row for row in val_rows if row.gold_ids]
            held = sorted(random.Random(r.seed).sample(held, min(r.eval_questions, len(held))), key=lambda x: x.id)
            alone: dict = {}
            reranker = Reranker(model, target.name, "torch", first_stage_temperature=temperature)
            metrics = {"candidates": n, "mode": mode, "first_stage_temperature": temperature,
                       "first_stage": ranking_metrics(retriever, held, mode, n),
                       "reranked": ranking_metrics(retriever, held, mode, n, reranker, alone=alone)}
            if alone:
                metrics["cross_encoder_alone"] = alone
        abstention = None
        if r.calibration_questions:
            from ragqa.rerank.calibrate import calibrate, in_domain_rows

            scorer = Reranker(model, target.name, "torch", first_stage_temperature=temperature)
            pool, described = ((dev_rows, "the dev questions (not trained on)") if dev_rows
                               else (used, "training-split questions (trained on)"))
            abstention = calibrate(retriever, scorer, in_domain_rows(pool, r.calibration_questions, r.seed), mode,
                                   n, r.seed, described)
        card = {
            "name": target.name,
            "kind": "reranker",
            "ragqa_version": __version__,
            "base": r.base,
            **({"layers": {"kept": kept, "of": base_layers}} if kept else {}),
            **({"teacher": r.teacher} if r.teacher else {}),
            "max_length": r.max_length,
            "passage": "title line + text",
            "first_stage_temperature": temperature,
            "recipe": r.model_dump(mode="json"),
            "data": {
                "qa": [{"path": path, "sha256": digest} for path, digest in hashes.items()],
                "index": str(retriever.path),
                "split": {"by": split_by, "val_fraction": t.val_fraction, "seed": t.seed,
                          "train_questions": len(train_rows), "val_questions": len(val_rows),
                          "val_ids": sorted(row.id for row in val_rows)},
                **({"dev_fraction": r.dev_fraction, "dev_ids": sorted(row.id for row in dev_rows)} if dev_rows else {}),
                "questions": kinds["gold"], "skipped_questions": skipped,
                "pairs": dict(kinds),
            },
            "metrics": {"validation": metrics, **({"dev": dev} if dev else {})},
            "abstention": abstention,
            "train": {"steps": result.global_step, "loss": round(result.training_loss, 4),
                      "seconds": round(time.time() - t0, 1), "device": device, "threads": torch.get_num_threads()},
        }
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    if metrics:
        before, after = metrics["first_stage"], metrics["reranked"]
        shown = ", ".join(f"{name} {before.get(name, 0):.3f} -> {after.get(name, 0):.3f}"
                          for name in ("recall@1", "recall@3", "mrr@10"))
        console.print(f"reranker saved to {target}: validation ({mode} first stage -> reranked top "
                      f"{metrics['candidates']}) {shown} ({card['train']['seconds']:.0f} s)")
    else:
        console.print(f"reranker saved to {target} ({card['train']['seconds']:.0f} s)")
    if abstention is not None:
        from ragqa.rerank.calibrate import summary

        console.print(summary(abstention))
    return target
