"""Relevance-based abstention for a trained reranker (`ragqa rerank calibrate`, and the end of `ragqa rerank
train`): with retrieval.rerank set and retrieval.abstain_below `auto`, ragqa answers when the reranker's calibrated
probability of its best passage clears the cut in the reranker's card, on any index, instead of the dense cosine.

The score is the best rank logit of a question's first-stage candidates (Reranker.rank_logits: the cross-encoder's
logit + the dense cosine / first_stage_temperature), as Retriever.retrieve(rerank=...) ranks them. In-domain
questions are training-split questions of the reranker's own split (never its validation ones), off-topic ones a
seeded half of the shipped list (ragqa.abstain.off_topic_questions); the other half is held out and its decline
rate reported. Platt scaling, the cut and the rates are ragqa.abstain.calibrate_relevance's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from ragqa.errors import RagqaError
from ragqa.passage import search_mode

SCORE = ("calibrated P(in-domain) = sigmoid(scale * s + bias), s = the best candidate's rank logit "
         "(cross-encoder logit + dense cosine / first_stage_temperature)")


def best_logits(retriever, reranker, questions: Sequence[str], mode: str, candidates: int) -> list[float]:
    """Each question's highest rank logit among its first `candidates` first-stage results."""
    out = []
    for question in questions:
        passages = retriever.retrieve(question, k=candidates, mode=mode)
        out.append(float(reranker.rank_logits(question, passages).max()) if passages else float("-inf"))
    return out


def off_topic_halves(seed: int) -> tuple[list[str], list[str]]:
    """(fitted, held out): the shipped off-topic questions split in two seeded halves, each in file order."""
    from ragqa.abstain import off_topic_questions

    questions = list(off_topic_questions())
    order = random.Random(seed).sample(range(len(questions)), len(questions))
    held = set(order[: len(questions) // 2])
    return ([q for i, q in enumerate(questions) if i not in held], [q for i, q in enumerate(questions) if i in held])


def calibrate(retriever, reranker, in_domain: Sequence, mode: str, candidates: int, seed: int,
              described: str) -> dict:
    """The card's `abstention` block: Platt scale and bias, the probability cut and its rates on `in_domain`
    (QARows) and the fitted off-topic half, the held-out half's decline rate, and what was measured."""
    from ragqa.abstain import OFF_TOPIC_FILE, calibrate_relevance

    fitted, held = off_topic_halves(seed)
    result = calibrate_relevance(best_logits(retriever, reranker, [row.question for row in in_domain], mode,
                                             candidates),
                                 best_logits(retriever, reranker, fitted, mode, candidates),
                                 best_logits(retriever, reranker, held, mode, candidates))
    return {**result, "score": SCORE, "mode": mode, "candidates": candidates, "index": str(retriever.path),
            "in_domain": described, "in_domain_ids": sorted(row.id for row in in_domain),
            "off_topic": f"{OFF_TOPIC_FILE.name}: {len(fitted)} of {len(fitted) + len(held)} fitted (seed {seed}), "
                         f"the other {len(held)} held out"}


def in_domain_rows(rows: Sequence, limit: int, seed: int) -> list:
    """Up to `limit` (seeded) of the calibration's in-domain question rows, by id."""
    rows = sorted(rows, key=lambda row: row.id)
    return sorted(random.Random(seed).sample(rows, min(limit, len(rows))), key=lambda row: row.id)


def summary(calibration: dict) -> str:
    """One line for the console."""
    held = calibration.get("held_out_off_topic") or {}
    extra = f", {held['declined']:.0%} of {held['n']} held-out off-topic ones" if held else ""
    return (f"relevance abstention: below P {calibration['threshold']:.3f} (answers "
            f"{calibration['answered_in_domain']:.0%} of {calibration['n_in_domain']} in-domain questions: "
            f"{calibration.get('in_domain', '')}; "
            f"declines {calibration['declined_off_topic']:.0%} of {calibration['n_off_topic']} fitted off-topic "
            f"ones{extra})")


def calibrate_reranker(cfg, name: str, console=None) -> Path:
    """Calibrate an existing trained reranker (`ragqa rerank calibrate`) on the training questions of the split
    it was trained on (cfg's train section, checked against the card's validation ids) and write the result into
    its card, atomically; return its folder."""
    from rich.console import Console

    from ragqa.files import write_json_atomic
    from ragqa.models import resolve_device
    from ragqa.qa import load_train_qa, split_rows
    from ragqa.rerank.model import load_reranker, read_card, reranker_location
    from ragqa.rerank.registry import CARD
    from ragqa.retrieve import Retriever

    console = console or Console(stderr=True)
    location, _ = reranker_location(name)
    folder = Path(location)
    card = read_card(folder) if folder.is_dir() else None
    if card is None or card.get("kind") != "reranker":
        raise RagqaError(f"reranker '{name}' is not a ragqa-trained reranker folder (no {CARD}): only those can be "
                         "calibrated; train one with `ragqa rerank train`")
    t, r = cfg.train, cfg.rerank
    rows, _ = load_train_qa(t.data)
    train_rows, val_rows = split_rows(rows, t.val_fraction, t.seed, by=t.split_by)
    split = (card.get("data") or {}).get("split") or {}
    if split.get("val_ids") != sorted(row.id for row in val_rows):
        raise RagqaError(f"reranker '{name}' was trained on another train/validation split than this config's "
                         f"(train.data, split_by, val_fraction, seed): its validation questions could be "
                         "calibrated on; pass the recipe it was trained with (--config)")
    dev_ids = set((card.get("data") or {}).get("dev_ids") or ())
    if dev_ids:
        pool, described = [row for row in train_rows if row.id in dev_ids], "the dev questions (not trained on)"
    else:
        pool, described = train_rows, "training-split questions (trained on)"
    if not r.calibration_questions:
        raise RagqaError("rerank.calibration_questions is 0: give --questions N (N > 0) to calibrate on")
    used = in_domain_rows(pool, r.calibration_questions, r.seed)
    mode = search_mode(cfg.retrieval.mode)
    retriever = Retriever.from_config(cfg)
    reranker = load_reranker(str(folder), resolve_device(cfg.model.device), cfg.retrieval.rerank_backend)
    calibration = calibrate(retriever, reranker, used, mode, cfg.retrieval.rerank_candidates, r.seed, described)
    write_json_atomic(folder / CARD, {**card, "abstention": calibration}, indent=2)
    console.print(f"{summary(calibration)}; written to {folder / CARD}")
    return folder
