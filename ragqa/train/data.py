"""Training data: Q&A rows -> deterministic split -> RAFT-style context -> tokens -> length-grouped batches.

RAFT (Zhang et al. 2024): each question is shown k retrieved passages. With probability p the gold
passage is among them at a random position; otherwise all k are distractors, i.e. the question's own
retrieved neighbours from other documents. The model thus learns to answer from the right passage and
to cope when retrieval misses it. Tokenization goes through `ragqa.prompt.encode_example`, the same
template `ragqa ask` renders, and the result is cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ragqa.errors import RagqaError
from ragqa.files import sha256_file, write_json_atomic
from ragqa.passage import Passage, search_mode
from ragqa.qa import QARow, gold_passage, split_rows
from ragqa.qa import gold_siblings as _siblings
from ragqa.qa import load_train_qa as load_qa


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]
    gold_in_context: bool
    """Whether the gold passage was among the context passages (RAFT bookkeeping)."""
    context_ids: list[str] = field(default_factory=list)

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)


@dataclass
class TrainData:
    train: list[Example]
    val: list[Example]
    split: dict[str, list[str]]
    """{'train': ids, 'val': ids}: every held-out id, including those beyond max_val_examples."""
    data_hashes: dict[str, str]
    cache_key: str
    from_cache: bool = False


# Loading, splitting and the gold passage live in ragqa.qa (rerank and query_tuning use them too, and must not
# import training code); the names stay importable from here.


# ---------------------------------------------------------------- RAFT context


def raft_context(retriever, row: QARow, k: int, p: float, seed: int, mode: str,
                 siblings: Sequence[Passage] = (), n_siblings: int = 0) -> tuple[list[Passage], int | None]:
    """k passages for `row`: with probability p the gold one at a random position, else only distractors.

    Distractors are hard negatives: up to `n_siblings` of `siblings` (passages of the same document that answer
    its other questions: the same condition's treatment when the question asks its symptoms), then the
    question's own retrieved neighbours from other documents, in retrieval order. Their positions are shuffled,
    so the model cannot learn where the gold passage stands. Returns the passages and the 0-based position of
    the gold passage (None when it was left out).
    """
    rng = random.Random(f"{seed}:{row.id}")  # per-row stream: independent of order and of other rows
    gold = gold_passage(retriever, row, mode)
    gold_docs = set(row.gold_ids) | ({gold.doc_id} if gold else set())
    include = gold is not None and rng.random() < p
    wanted = k - 1 if include else k
    same = [c for c in siblings if c.doc_id not in gold_docs]
    hard = rng.sample(same, min(n_siblings, len(same), wanted))
    taken = gold_docs | {c.doc_id for c in hard}
    neighbours = retriever.retrieve(row.question, k=k + 8, mode=mode)
    distractors = hard + [c for c in neighbours if c.doc_id not in taken][: wanted - len(hard)]
    if hard:  # retrieval order alone is already position-neutral for the gold passage
        rng.shuffle(distractors)
    if include:
        at = rng.randrange(len(distractors) + 1)
        distractors.insert(at, gold)
        return distractors, at
    return distractors, None


TARGET_VERSION = "2"
"""Part of the tokenized data's cache key: bump when trim_answer or cite_target change what a target says
(2: list items kept with their bullets)."""


def trim_answer(answer: str, tokenizer, budget: int | None) -> str:
    """The answer's leading whole sentences that fit in `budget` tokens (at least the first sentence, cut to
    the budget in words if it alone is longer). Headings are left out: short lines without a full stop ("Key
    Points") and questions (MedQuAD passages open with their question: "What causes X?"; a target that repeats
    it teaches the model to echo the question). List items stay, with their ' - ' bullets, however short: without
    them a third of MedQuAD's answers trained the model to write a list's lead-in ("These resources address the
    diagnosis or management of X:") and no list. None keeps the answer as it is."""
    if budget is None:
        return answer
    from ragqa.judge.text import join_units, split_units

    def size(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    units = [(s, item) for s, item in split_units(answer)
             if not s.endswith("?") and (item or s[-1] in ".!:;)" or len(s.split()) > 4)]
    units = units or [(answer.strip(), False)]
    kept: list[tuple[str, bool]] = []
    for unit in units:
        if size(join_units([*kept, unit])) > budget:
            break
        kept.append(unit)
    if kept:
        return join_units(kept)
    words = units[0][0].split()
    while words and size(" ".join(words)) > budget:
        words = words[: max(1, len(words) * 9 // 10) if len(words) > 1 else 0]
    return " ".join(words)


def cite_target(answer: str, n: int, citations: str) -> str:
    """The target citing passage n at its end (`end`) or after every sentence (`sentence`)."""
    from ragqa.prompt import cite

    if citations == "sentence":
        from ragqa.judge.text import join_units, split_units

        return join_units([(cite(s, n), item) for s, item in split_units(answer)]) or cite(answer, n)
    return cite(answer, n)


DECLINE_TARGET = "The passages shown do not answer this question; the nearest is [{n}]."
"""Training target (train.raft_absent=decline) when the gold passage is not among the passages."""


# ---------------------------------------------------------------- tokenization + cache


def index_fingerprint(index_name: str) -> str:
    """Identity of the index a context was drawn from: the sha256 of its manifest."""
    from ragqa.index.manifest import MANIFEST, existing_index, index_dir

    path = existing_index(index_dir(index_name))
    if path is None:
        raise RagqaError(f"no index '{index_name}' for the training context: run `ragqa ingest` first "
                         "(or --set train.context_k=0 to train closed-book)")
    return sha256_file(path / MANIFEST)


def tokenizer_fingerprint(tokenizer) -> str:
    parts = [tokenizer.name_or_path.rstrip("/").split("/")[-1], str(len(tokenizer)),
             str(getattr(tokenizer, "chat_template", "")), str(tokenizer.eos_token_id)]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def cache_key(cfg, data_hashes: dict[str, str], tokenizer) -> str:
    """Data hash + template version + tokenizer + every config field that changes the examples."""
    from ragqa.prompt import TEMPLATE_VERSION

    t = cfg.train
    relevant = {
        "data": sorted(data_hashes.values()),
        "template": TEMPLATE_VERSION,
        "targets": TARGET_VERSION,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "train": [t.val_fraction, t.max_examples, t.max_val_examples, t.raft_gold_prob, t.context_k,
                  t.max_seq_len, t.seed, cfg.ask.context_tokens, t.raft_absent, t.same_document_negatives,
                  t.split_by, t.target_tokens, t.citations],
        "index": index_fingerprint(cfg.index.name) if t.context_k > 0 else None,
        "embedder": cfg.model.embedder if t.context_k > 0 else None,
        "mode": search_mode(cfg.retrieval.mode) if t.context_k > 0 else None,
        "fusion": [cfg.retrieval.rrf_k, cfg.retrieval.fusion_candidates] if t.context_k > 0 else None,
        "query_encoder": _query_encoder_fingerprint(cfg) if t.context_k > 0 else None,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:20]


def _query_encoder_fingerprint(cfg) -> str | None:
    """The tuned query encoder's weights hash (its name may be retrained in place), None when the base one is used."""
    from ragqa.query_tuning.model import OFF, query_encoder_location, read_card

    name = cfg.retrieval.query_encoder_weights
    return None if name in OFF else read_card(query_encoder_location(name)).get("weights_sha256")


def _encode_rows(rows: list[QARow], tokenizer, retriever, cfg, progress) -> list[Example]:
    from ragqa.prompt import encode_example, fit_passages

    t = cfg.train
    mode = search_mode(cfg.retrieval.mode)
    siblings = _siblings(rows, retriever, mode) if t.context_k > 0 and t.same_document_negatives else {}
    examples = []
    for row in progress(rows):
        passages, gold_at = None, None
        answer = trim_answer(row.answer, tokenizer, t.target_tokens)
        if t.context_k > 0:
            passages, gold_at = raft_context(retriever, row, t.context_k, t.raft_gold_prob, t.seed, mode,
                                             siblings.get(row.group or "", ()), t.same_document_negatives)
            # The same context budget `ask` uses, so the adapter trains on what it will see.
            passages = fit_passages(tokenizer, passages, cfg.ask.context_tokens)
            if gold_at is not None:  # teach the citation habit: the target cites the gold passage
                answer = cite_target(answer, gold_at + 1, t.citations)
            elif t.raft_absent == "decline" and passages:
                nearest = min(range(len(passages)), key=lambda i: -passages[i].score)
                answer = DECLINE_TARGET.format(n=nearest + 1)
        enc = encode_example(tokenizer, row.question, passages, answer, t.max_seq_len)
        examples.append(Example(row.id, enc.input_ids, enc.labels, gold_at is not None,
                                [p.chunk_id for p in passages or []]))
    return examples


def _cache_path(key: str) -> Path:
    from ragqa.models import cache_dir

    return cache_dir() / "train-data" / f"{key}.json"


def build_data(cfg, tokenizer, *, use_cache: bool = True, retriever=None, show_progress: bool = True) -> TrainData:
    """Load, split, add RAFT context and tokenize the configured Q&A data (cached on disk)."""
    t = cfg.train
    rows, hashes = load_qa(t.data, cfg.ask.max_question_chars)
    key = cache_key(cfg, hashes, tokenizer)
    path = _cache_path(key)
    train_rows, val_rows = split_rows(rows, t.val_fraction, t.seed, t.split_by)
    if t.max_examples is not None and len(train_rows) > t.max_examples and show_progress:
        print(f"train.max_examples={t.max_examples}: training on a seeded {t.max_examples} of {len(train_rows)} "
              "training questions (--set train.max_examples=null for all)", file=sys.stderr)
    if use_cache and path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            return TrainData([Example(**e) for e in cached["train"]], [Example(**e) for e in cached["val"]],
                             cached["split"], hashes, key, from_cache=True)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a damaged cache is rebuilt below
    split = {"train": sorted(r.id for r in train_rows), "val": sorted(r.id for r in val_rows)}
    if t.max_examples is not None:
        train_rows = train_rows[: t.max_examples]
        split["train"] = sorted(r.id for r in train_rows)
    if t.max_val_examples is not None:
        val_rows = val_rows[: t.max_val_examples]
    if t.context_k > 0 and retriever is None:
        from ragqa.retrieve import Retriever

        retriever = Retriever.from_config(cfg)
    progress = _progress("tokenizing Q&A with RAFT context") if show_progress else (lambda xs: xs)
    train = _encode_rows(train_rows, tokenizer, retriever, cfg, progress)
    val = _encode_rows(val_rows, tokenizer, retriever, cfg, progress)
    data = TrainData(train, val, split, hashes, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"train": [vars(e) for e in train], "val": [vars(e) for e in val], "split": split},
                      option="RAGQA_CACHE folder")
    return data


def _progress(description: str):
    def wrap(items):
        from rich.progress import track

        return track(items, description=description, transient=True)

    return wrap


# ---------------------------------------------------------------- batching


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                           group: bool = True) -> list[list[int]]:
    """One epoch's batches of example indices: shuffled, then (if group) sorted by length within
    mega-batches of 50 batches, so a batch pads to nearly its own length; batch order is shuffled again.

    Hand-written rather than transformers' LengthGroupedSampler because the trainer needs the exact
    batch list of any epoch (seed, epoch) to resume mid-epoch without replaying data.
    """
    rng = random.Random(f"{seed}:epoch{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group:
        mega = batch_size * 50
        order = [i for s in range(0, len(order), mega)
                 for i in sorted(order[s:s + mega], key=lambda i: -lengths[i])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


MIN_SHARED_PREFIX = 16
"""Shorter common prefixes are not worth a second forward call."""


def collate(examples: Sequence[Example], pad_id: int, share_prefix: bool = True, multiple: int = 1):
    """Right-pad a batch to its longest example (rounded up to `multiple`); labels are -100 on padding.

    No attention mask: with the padding after each row's tokens, causal attention alone keeps every real
    token from seeing it, so no 4-D mask is built and SDPA takes its causal path (0.3-1.4 s of an 11-14 s
    CPU step of the recipe, measured against left padding with a mask). Outputs at padded positions are
    never read. The trainer computes logits only for the last `keep` positions
    (`logits_to_keep`), from the first answer token of any row on: the LM head (49k-way for SmolLM2) never
    runs on the prompt tokens before it, which carry no loss.

    `shared` is the length of the prefix every row has in common (system prompt, chat template, the
    passages' opening: 103 tokens in the CPU recipe), or 0. The trainer runs it once and gives its keys
    and values to all rows, instead of computing the same thing batch-size times (see Trainer._forward).
    """
    import torch

    width = math.ceil(max(len(e.input_ids) for e in examples) / multiple) * multiple
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, :len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, :len(e.labels)] = torch.tensor(e.labels)
    first_label = min(next(i for i, label in enumerate(e.labels) if label != -100) for e in examples)
    keep = width - first_label + 1  # one more: the logit before the first answer token predicts it
    shared = 0
    if share_prefix and len(examples) > 1:
        common = _common_prefix([e.input_ids for e in examples])
        # Every position whose logits are kept stays in the second call, which needs one token at least.
        shared = min(common, first_label) - 1
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
    return {"input_ids": ids, "labels": labels, "keep": keep, "shared": shared}


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all rows share."""
    n = min(len(r) for r in rows)
    first = rows[0]
    for i in range(n):
        token = first[i]
        if any(r[i] != token for r in rows[1:]):
            return i
    return n


def batches_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)
