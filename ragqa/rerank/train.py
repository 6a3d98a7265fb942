"""Train the cross-encoder reranker (`ragqa rerank train`) on (question, passage, 1/0) pairs mined from the index.

sentence-transformers' CrossEncoderTrainer with binary cross-entropy on one logit: the scores are then
probabilities, comparable across questions (answer_relevance uses them). The questions and their train/validation
split are the train section's (train.data, split_by, val_fraction, seed: the RAFT recipe's document-disjoint
split), so the reranker never sees a validation question. The result is a folder with safetensors weights and a
`reranker.json` card (data hashes, split, pair counts, recipe, first-stage vs reranked validation metrics),
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
from ragqa.files import atomic_dir, check_writable_dir
from ragqa.rerank.registry import CARD


def ranking_metrics(retriever, rows: Sequence, mode: str, candidates: int, reranker=None) -> dict:
    """Mean recall@1, recall@5 and MRR@10 of the gold documents in the first `candidates` results, as retrieved
    or reranked by `reranker` (a ragqa.rerank Reranker); rows are QARows with gold ids."""
    from ragqa.evaluate.retrieval import rank_metrics

    scored = [row for row in rows if row.gold_ids]
    if not scored:
        return {}
    totals: Counter = Counter()
    for row in scored:
        passages = retriever.retrieve(row.question, k=candidates, mode=mode)
        if reranker is not None and passages:
            scores = reranker.scores([(row.question, p.text) for p in passages])
            # stable: ties keep the first-stage order, as Retriever._rerank does
            passages = [passages[i] for i in sorted(range(len(passages)), key=lambda i: -float(scores[i]))]
        totals.update(rank_metrics([p.doc_id for p in passages], row.gold_ids, ks=(1, 5)))
    return {"n": len(scored), **{name: round(total / len(scored), 4) for name, total in sorted(totals.items())}}


def _dataset(pairs):
    from datasets import Dataset

    return Dataset.from_dict({"question": [p.question for p in pairs], "passage": [p.passage for p in pairs],
                              "label": [p.label for p in pairs]})


def _check_output(target: Path) -> None:
    """Replace only a folder ragqa wrote (a reranker card in it) or an empty one; never someone else's files."""
    check_writable_dir(target)
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
    t0 = time.time()
    rows, hashes = load_qa(t.data)
    train_rows, val_rows = split_rows(rows, t.val_fraction, t.seed, by=t.split_by)
    split_by = t.split_by if t.split_by != "auto" else ("document" if all(row.group for row in rows) else "question")
    used = list(train_rows)
    if r.max_questions and r.max_questions < len(used):
        used = sorted(random.Random(r.seed).sample(used, r.max_questions), key=lambda row: row.id)
    mode = cfg.retrieval.mode if cfg.retrieval.mode != "none" else "hybrid"
    retriever = Retriever.from_config(cfg)
    pairs, skipped = mine_pairs(retriever, used, negatives=r.negatives, same_document=r.same_document_negatives,
                                candidates=r.candidates, mode=mode, seed=r.seed)
    if not pairs:
        raise RagqaError(f"train.data {', '.join(t.data)}: no training question has a gold passage in index "
                         f"{retriever.path} (gold_passage_ids must name passages of the index)")
    kinds = Counter(p.kind for p in pairs)
    console.print(f"reranker data: {kinds['gold']} training questions ({skipped} without a gold passage), "
                  f"{len(pairs) - kinds['gold']} hard negatives; {len(val_rows)} validation questions left out")

    import torch
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import set_seed

    from ragqa.judge.train import length_grouped_sampler
    from ragqa.rerank.model import Reranker

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

    with atomic_dir(target) as tmp:  # created before training: a read-only or full folder fails early
        with tempfile.TemporaryDirectory(prefix=".reranker-trainer-", dir=target.parent) as scratch:
            args = CrossEncoderTrainingArguments(
                output_dir=scratch, num_train_epochs=r.epochs, max_steps=r.max_steps or -1,
                per_device_train_batch_size=r.batch_size, learning_rate=r.lr, warmup_steps=0.1, weight_decay=0.01,
                seed=r.seed, data_seed=r.seed, save_strategy="no", eval_strategy="no", report_to="none",
                logging_steps=50, use_cpu=device == "cpu",
                bf16=device.startswith("cuda") and torch.cuda.is_bf16_supported(),
                dataloader_num_workers=0, disable_tqdm=False, batch_sampler=length_grouped_sampler(),
            )
            trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=_dataset(pairs),
                                          loss=BinaryCrossEntropyLoss(model))
            result = trainer.train()
        model.eval()
        model.save(str(tmp), create_model_card=False, safe_serialization=True)
        metrics = {}
        if r.eval_questions and val_rows:
            held = [row for row in val_rows if row.gold_ids]
            held = sorted(random.Random(r.seed).sample(held, min(r.eval_questions, len(held))), key=lambda x: x.id)
            n = cfg.retrieval.rerank_candidates
            metrics = {"candidates": n, "mode": mode,
                       "first_stage": ranking_metrics(retriever, held, mode, n),
                       "reranked": ranking_metrics(retriever, held, mode, n, Reranker(model, target.name, "torch"))}
        card = {
            "name": target.name,
            "kind": "reranker",
            "ragqa_version": __version__,
            "base": r.base,
            "max_length": r.max_length,
            "recipe": r.model_dump(mode="json"),
            "data": {
                "qa": [{"path": path, "sha256": digest} for path, digest in hashes.items()],
                "index": str(retriever.path),
                "split": {"by": split_by, "val_fraction": t.val_fraction, "seed": t.seed,
                          "train_questions": len(train_rows), "val_questions": len(val_rows),
                          "val_ids": sorted(row.id for row in val_rows)},
                "questions": kinds["gold"], "skipped_questions": skipped,
                "pairs": dict(kinds),
            },
            "metrics": {"validation": metrics},
            "train": {"steps": result.global_step, "loss": round(result.training_loss, 4),
                      "seconds": round(time.time() - t0, 1), "device": device, "threads": torch.get_num_threads()},
        }
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    if metrics:
        before, after = metrics["first_stage"], metrics["reranked"]
        console.print(f"reranker saved to {target}: validation recall@1 {before.get('recall@1', 0):.3f} -> "
                      f"{after.get('recall@1', 0):.3f}, MRR@10 {before.get('mrr@10', 0):.3f} -> "
                      f"{after.get('mrr@10', 0):.3f} ({card['train']['seconds']:.0f} s)")
    else:
        console.print(f"reranker saved to {target} ({card['train']['seconds']:.0f} s)")
    return target
