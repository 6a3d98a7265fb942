"""Retrieval quality: recall@k and MRR@10 of a Retriever over Q&A rows with gold passage ids.

A question counts as answered at rank r when the r-th retrieved chunk belongs to one of its gold documents
(chunk doc_id in gold_passage_ids). recall@k = share of the gold documents found in the top k, averaged
over questions; MRR@10 = mean of 1/r for the first gold chunk within the top 10 (0 if none).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ragqa.errors import RagqaError
from ragqa.passage import SEARCH_MODES
from ragqa.qa import MAX_QUESTION_CHARS, load_qa


def load_gold_rows(path: str | Path, limit: int | None = None,
                   max_question_chars: int = MAX_QUESTION_CHARS) -> list[dict[str, Any]]:
    """The rows of a Q&A file (ragqa.qa: the loader train and eval use) that name gold passages; rows without
    gold_passage_ids are skipped (nothing to score), bad rows are refused."""
    rows, _ = load_qa([path], option="--questions", need_answer=False, max_question_chars=max_question_chars)
    out = [{"id": r.id, "question": r.question, "gold_passage_ids": r.gold_ids} for r in rows if r.gold_ids]
    if not out:
        raise RagqaError(f"--questions {path}: no rows with 'question' and 'gold_passage_ids'")
    return out[:limit] if limit is not None else out


def rank_metrics(ranked_doc_ids: Sequence[str], gold: Iterable[str], ks: Sequence[int]) -> dict[str, float]:
    """recall@k for each k and MRR@10 of one ranked list of doc ids."""
    gold = set(gold)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = len(gold & set(ranked_doc_ids[:k])) / len(gold)
    out["mrr@10"] = next((1.0 / r for r, d in enumerate(ranked_doc_ids[:10], start=1) if d in gold), 0.0)
    return out


def evaluate_retrieval(retriever, rows: Sequence[dict[str, Any]], modes: Sequence[str] = SEARCH_MODES,
                       ks: Sequence[int] = (1, 5, 10), rerank: str | None = None,
                       progress: bool = True) -> dict[str, dict[str, float]]:
    """Mean metrics per mode (key 'MODE+rerank' when reranking), plus the question count 'n'."""
    depth = max(max(ks), 10)
    results: dict[str, dict[str, float]] = {}
    for mode in modes:
        totals: dict[str, float] = {}
        iterator: Iterable = rows
        if progress:
            from rich.progress import track

            iterator = track(rows, description=f"retrieval {mode}", transient=True)
        for row in iterator:
            passages = retriever.retrieve(row["question"], k=depth, mode=mode, rerank=rerank)
            metrics = rank_metrics([p.doc_id for p in passages], row["gold_passage_ids"], ks)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
        name = f"{mode}+rerank" if rerank else mode
        results[name] = {key: round(value / len(rows), 4) for key, value in totals.items()}
        results[name]["n"] = len(rows)
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per mode."""
    keys = [k for k in next(iter(results.values())) if k != "n"]
    lines = ["| mode | " + " | ".join(keys) + " | n |", "|---" * (len(keys) + 2) + "|"]
    for mode, metrics in results.items():
        lines.append(f"| {mode} | " + " | ".join(f"{metrics[k]:.3f}" for k in keys) + f" | {metrics['n']} |")
    return "\n".join(lines)
