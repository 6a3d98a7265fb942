"""Training lists for the reranker: each question with its gold passage (label 1) and hard negatives (label 0).

Hard negatives are what the reranker must learn to put below the gold passage: the question's own top retrieved
passages from other documents (what the first stage confuses it with), and other passages of the same document
(the same condition's treatment when the question asks its symptoms) when the Q&A rows carry a doc_id. The gold
passage is chosen as RAFT training chooses it (ragqa.qa.gold_passage), so both trainings agree on it. A passage
whose text is the gold's (MedQuAD repeats some answers under several documents) is never a negative.

Passages are read as the reranker reads them at inference (ragqa.rerank.model.passage_text: title line + text).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ragqa.qa import QARow, gold_passage, gold_siblings
from ragqa.rerank.model import passage_text


@dataclass(frozen=True)
class RankPair:
    question: str
    passage: str
    label: float
    """1.0 for the gold passage, 0.0 for a negative."""
    kind: str
    """gold | retrieved | same_document"""
    row_id: str


def mine_pairs(retriever, rows: Sequence[QARow], *, negatives: int, same_document: int, candidates: int,
               mode: str, seed: int) -> tuple[list[RankPair], int]:
    """(pairs, questions skipped for want of a gold passage in the index). Deterministic for a seed; each
    question's pairs are consecutive, its gold pair first."""
    siblings = gold_siblings(list(rows), retriever, mode)
    pairs: list[RankPair] = []
    skipped = 0
    for row in rows:
        gold = gold_passage(retriever, row, mode)
        if gold is None or not row.gold_ids:
            skipped += 1  # without gold ids, "the top chunk retrieved by the answer" is a guess, not a label
            continue
        rng = random.Random(f"{seed}:{row.id}")  # per-row stream: independent of order and of other rows
        gold_docs = set(row.gold_ids) | {gold.doc_id}
        same = [c for c in siblings.get(row.group or "", ()) if c.doc_id not in gold_docs and c.text != gold.text]
        hard = rng.sample(same, min(same_document, len(same), negatives))
        taken = {c.chunk_id for c in hard}
        retrieved = [c for c in retriever.retrieve(row.question, k=candidates, mode=mode)
                     if c.doc_id not in gold_docs and c.chunk_id not in taken and c.text != gold.text]
        retrieved = retrieved[: negatives - len(hard)]

        labelled = [(gold, 1.0, "gold"), *((c, 0.0, "same_document") for c in hard),
                    *((c, 0.0, "retrieved") for c in retrieved)]
        pairs += [RankPair(row.question, passage_text(p), label, kind, row.id) for p, label, kind in labelled]
    return pairs, skipped
