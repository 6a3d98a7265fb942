"""Fine-tune a 3-way NLI cross-encoder (the faithfulness judge) on general NLI + in-domain pairs.

sentence-transformers' CrossEncoderTrainer does the training. NLI pairs (short captions) and in-domain
pairs (passage windows) go in as two datasets so that each batch comes from one of them and short pairs
are not padded to passage length. The result is a folder with safetensors weights and a `judge.json` card
(data hashes, counts, recipe, dev metrics), written atomically.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from ragqa import __version__
from ragqa.errors import RagqaError, first_line
from ragqa.files import atomic_dir, check_output_dir, iter_jsonl, sha256_file, temp_prefix
from ragqa.judge.pairs import LABELS, Pair, load_docs, make_pairs
from ragqa.judge.registry import CARD
from ragqa.terminal import markup_safe

NLI_DEV = 500
"""NLI pairs kept out of training to report the dev accuracy on the card."""
DOMAIN_DEV = 600
DEV_FRACTION = 0.1
"""Share of conditions (beside the held-out ones) kept for the in-domain dev metrics."""


def read_nli(path: str | Path) -> list[Pair]:
    """{premise, hypothesis, label} JSONL; rows without a valid label (SNLI's '-') are skipped."""
    p = Path(path)
    if not p.is_file():
        raise RagqaError(f"NLI file {p} not found: give --nli PATH (SNLI JSONL with premise/hypothesis/label), "
                         "or --nli none to train on in-domain pairs only")
    pairs = []
    for n, row in iter_jsonl(p, "NLI file", "an object with premise, hypothesis and label"):
        if row.get("label") in LABELS and row.get("premise") and row.get("hypothesis"):
            pairs.append(Pair(row["premise"], row["hypothesis"], row["label"], "nli", f"{p.name}:{n}"))
    if not pairs:
        raise RagqaError(f"{p}: no rows with premise, hypothesis and label in {', '.join(LABELS)}")
    return pairs


def accuracy_auc(judge, pairs: list[Pair]) -> dict:
    """3-way accuracy, and ROC-AUC of P(entailment) for supported (entailment) vs not."""
    from sklearn.metrics import roc_auc_score

    if not pairs:
        return {}
    probs = judge.probs([(p.premise, p.hypothesis) for p in pairs])
    predicted = [max(row, key=row.get) for row in probs]
    out = {"n": len(pairs), "accuracy": sum(a == p.label for a, p in zip(predicted, pairs, strict=True)) / len(pairs)}
    supported = [p.label == "entailment" for p in pairs]
    if 0 < sum(supported) < len(supported):
        out["auc_supported"] = float(roc_auc_score(supported, [row["entailment"] for row in probs]))
    return out


def _label_config(location: str) -> dict:
    """Keep a base model's own NLI label order; otherwise name the new head's labels ours."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=False)
        labels = sorted(str(v).lower() for v in (config.id2label or {}).values())
    except (OSError, ValueError):
        labels = []
    if labels == sorted(LABELS):
        return {}
    return {"id2label": dict(enumerate(LABELS)), "label2id": {label: i for i, label in enumerate(LABELS)}}


def _dataset(pairs: list[Pair]):
    from datasets import Dataset

    return Dataset.from_dict({
        "premise": [p.premise for p in pairs],
        "hypothesis": [p.hypothesis for p in pairs],
        "label": [LABELS.index(p.label) for p in pairs],
    })


def length_grouped_sampler():
    """A batch sampler that batches pairs of similar length (less padding: ~1.5x faster on CPU).

    Hand-written because transformers' group_by_length needs pre-tokenized input_ids, and the cross-encoder
    trainer passes raw text. Lengths are those of the dataset's first two (text) columns; the reranker uses it
    too. Shuffled megabatches of 50 batches are sorted by length, cut into batches, and
    the batches shuffled again; seeded per epoch.
    """
    from sentence_transformers.base.sampler import DefaultBatchSampler

    class LengthGroupedBatchSampler(DefaultBatchSampler):
        def __init__(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
            super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
            first, second = dataset.column_names[:2]
            self.lengths = [len(a) + len(b) for a, b in zip(dataset[first], dataset[second], strict=True)]

        def __len__(self) -> int:
            n = len(self.lengths)
            return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

        def __iter__(self):
            rng = random.Random(self.seed + self.epoch)
            order = list(range(len(self.lengths)))
            rng.shuffle(order)
            mega = self.batch_size * 50
            batches = []
            for start in range(0, len(order), mega):
                chunk = sorted(order[start : start + mega], key=self.lengths.__getitem__)
                batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
            if self.drop_last:
                batches = [b for b in batches if len(b) == self.batch_size]
            rng.shuffle(batches)
            yield from batches

    return LengthGroupedBatchSampler


def train_judge(cfg, console=None, *, overwrite: bool = False) -> Path:
    """Train per `cfg.judge` (a ragqa Config); return the judge folder.

    An existing judge.output that is not a ragqa judge is refused unless `overwrite` (--overwrite)."""
    from rich.console import Console

    from ragqa.judge.pairs import is_heldout
    from ragqa.models import resolve, resolve_device

    console = console or Console(stderr=True)
    j = cfg.judge
    check_output_dir(j.output, "judge", (CARD,), overwrite=overwrite)
    rng = random.Random(j.seed)
    t0 = time.time()

    # General NLI: a fixed dev slice, then at most max_nli training pairs.
    nli_train: list[Pair] = []
    nli_dev: list[Pair] = []
    if j.nli:
        nli = read_nli(j.nli)
        rng.shuffle(nli)
        nli_dev, nli_train = nli[:NLI_DEV], nli[NLI_DEV:]
        nli_train = nli_train[: j.max_nli] if j.max_nli else nli_train

    # In-domain: conditions split into held-out (never seen here), dev, and train.
    docs = load_docs(j.corpus)
    held = [d for d in docs if is_heldout(d.group, j.holdout_fraction)]
    dev_docs = [d for d in docs if not is_heldout(d.group, j.holdout_fraction)
                and is_heldout(d.group, j.holdout_fraction + DEV_FRACTION)]
    train_docs = [d for d in docs if not is_heldout(d.group, j.holdout_fraction + DEV_FRACTION)]
    if len({d.group for d in train_docs}) < 2:
        raise RagqaError(f"judge corpus {', '.join(j.corpus)}: too few conditions left for training after "
                         "holding some out; add passages about more conditions")
    domain_train = make_pairs(train_docs, seed=j.seed, max_pairs=j.max_domain, window_words=j.window_words)
    domain_dev = []
    if len({d.group for d in dev_docs}) > 1:
        domain_dev = make_pairs(dev_docs, seed=j.seed, max_pairs=DOMAIN_DEV, window_words=j.window_words)
    console.print(f"judge data: {len(nli_train)} NLI + {len(domain_train)} in-domain training pairs "
                  f"({len({d.group for d in train_docs})} conditions; {len({d.group for d in held})} held out)")

    import torch
    from datasets import DatasetDict
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import CrossEntropyLoss
    from transformers import set_seed

    from ragqa.judge.support import CrossEncoderJudge

    device = resolve_device(cfg.model.device)
    base = resolve(j.base)
    set_seed(j.seed)  # the classification head is initialised at random
    try:
        model = CrossEncoder(base.location, num_labels=len(LABELS), max_length=j.max_length, device=device,
                             trust_remote_code=False, local_files_only=base.source != "hub",
                             model_kwargs={"use_safetensors": True}, config_kwargs=_label_config(base.location))
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise RagqaError(f"judge base model '{j.base}': {first}") from None

    train_sets = {name: _dataset(pairs) for name, pairs in (("nli", nli_train), ("domain", domain_train)) if pairs}
    target = Path(j.output)
    with atomic_dir(target) as tmp:  # created before training: a read-only or full folder fails early
        # Named like atomic_dir's temp dirs, so that the next run removes it if this one is killed.
        with tempfile.TemporaryDirectory(prefix=temp_prefix(target) + "trainer-", dir=target.parent) as scratch:
            args = CrossEncoderTrainingArguments(
                output_dir=scratch, num_train_epochs=j.epochs, per_device_train_batch_size=j.batch_size,
                learning_rate=j.lr, warmup_steps=0.1, weight_decay=0.01, seed=j.seed, data_seed=j.seed,
                save_strategy="no", eval_strategy="no", report_to="none", logging_steps=50,
                use_cpu=device == "cpu", bf16=device.startswith("cuda") and torch.cuda.is_bf16_supported(),
                dataloader_num_workers=0, disable_tqdm=False, batch_sampler=length_grouped_sampler(),
            )
            trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=DatasetDict(train_sets),
                                          loss=CrossEntropyLoss(model))
            result = trainer.train()
        model.save(str(tmp), create_model_card=False, safe_serialization=True)
        judge = CrossEncoderJudge(str(tmp), target.name, device)
        metrics = {"nli_dev": accuracy_auc(judge, nli_dev), "domain_dev": accuracy_auc(judge, domain_dev)}
        card = {
            "name": target.name,
            "kind": "judge",
            "ragqa_version": __version__,
            "base": j.base,
            "labels": list(LABELS),
            "max_length": j.max_length,
            "recipe": j.model_dump(mode="json"),
            "data": {
                "nli": {"path": j.nli, "sha256": sha256_file(j.nli) if j.nli else None,
                        "train_pairs": len(nli_train), "dev_pairs": len(nli_dev),
                        "labels": dict(Counter(p.label for p in nli_train))},
                "corpus": [{"path": c, "sha256": sha256_file(c)} for c in j.corpus],
                "domain": {"train_pairs": len(domain_train), "dev_pairs": len(domain_dev),
                           "labels": dict(Counter(p.label for p in domain_train)),
                           "kinds": dict(Counter(p.kind for p in domain_train)),
                           "train_conditions": len({d.group for d in train_docs}),
                           "dev_conditions": len({d.group for d in dev_docs}),
                           "heldout_conditions": len({d.group for d in held})},
                "split": f"condition held out when sha256(condition) bucket < {j.holdout_fraction} "
                         f"(dev: < {j.holdout_fraction + DEV_FRACTION})",
            },
            "metrics": metrics,
            "train": {"steps": result.global_step, "loss": round(result.training_loss, 4),
                      "seconds": round(time.time() - t0, 1), "device": device,
                      "threads": torch.get_num_threads()},
        }
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    console.print(f"judge saved to {markup_safe(target)}: "
                  f"NLI dev acc {metrics['nli_dev'].get('accuracy', float('nan')):.3f}, "
                  f"in-domain dev AUC {metrics['domain_dev'].get('auc_supported', float('nan')):.3f} "
                  f"({card['train']['seconds']:.0f} s)")
    return target
