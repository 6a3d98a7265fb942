"""Abstention calibrated per index.

ragqa declines to answer when the best dense cosine similarity between the question and the index is below a
threshold. One fixed number cannot serve every index: on the starter corpus the best split between in-domain
and off-topic questions is near 0.29, on all of MedQuAD near 0.48 (benchmarks/retrieval.py). So `ragqa ingest`
calibrates it for the index it builds: questions made from the index's own document titles ("What is X?") stand
for in-domain questions, a shipped list of off-topic questions for the rest, and the cut that best separates the
two (balanced accuracy) is stored in the manifest with the rates it gives. `retrieval.abstain_below: auto` (the
default) uses it; a number overrides it.

With a reranker (retrieval.rerank) whose card holds a relevance calibration (`calibrate_relevance`, made by
`ragqa rerank train` and `ragqa rerank calibrate`), `auto` decides on relevance instead of the cosine: the
reranker's score of the best passage, mapped to a calibrated P(in-domain) by Platt scaling, against the cut that
best separates in-domain training questions from the shipped off-topic ones (`relevance`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

OFF_TOPIC_FILE = Path(__file__).parent / "data" / "off_topic_questions.txt"
FALLBACK_THRESHOLD = 0.30
"""For indexes without a calibration (built before it existed, or with too few titled documents): the split
fitted on the starter corpus."""
MIN_TITLES = 20
MAX_TITLES = 200
MARGIN = 0.02
"""How far above the highest declined off-topic score the calibrated cut sits (see calibrate)."""


@cache
def off_topic_questions() -> tuple[str, ...]:
    """The shipped off-topic questions (comment lines and blanks skipped)."""
    lines = OFF_TOPIC_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(q.strip() for q in lines if q.strip() and not q.startswith("#"))


def title_questions(titles: Sequence[str], seed: int = 0, limit: int = MAX_TITLES) -> list[str]:
    """'What is TITLE?' for up to `limit` distinct document titles, a seeded sample when there are more."""
    distinct = sorted({t.strip() for t in titles if t and t.strip()})
    if len(distinct) > limit:
        distinct = sorted(random.Random(seed).sample(distinct, limit))
    return [f"What is {t}?" for t in distinct]


def best_split(in_domain: Sequence[float], off_topic: Sequence[float]) -> dict[str, Any]:
    """The cut that maximizes balanced accuracy (answer in-domain, decline off-topic), midway between two
    observed scores (the lower one on ties), with the rates it gives on both sets."""
    inside, outside = np.asarray(in_domain, dtype=float), np.asarray(off_topic, dtype=float)
    values = np.unique(np.concatenate([inside, outside]))
    cuts = (values[:-1] + values[1:]) / 2 if len(values) > 1 else values
    rates = [(float(np.mean(inside >= t)), float(np.mean(outside < t))) for t in cuts]
    best = max(range(len(cuts)), key=lambda i: (rates[i][0] + rates[i][1], -cuts[i]))
    return {"threshold": round(float(cuts[best]), 4), "answered_in_domain": round(rates[best][0], 4),
            "declined_off_topic": round(rates[best][1], 4), "n_in_domain": len(inside),
            "n_off_topic": len(outside)}


def best_cosines(embed: Callable[[list[str]], np.ndarray], vectors: np.ndarray, questions: Sequence[str],
                 ) -> list[float]:
    """Each question's highest cosine similarity with any of the (normalized) chunk vectors."""
    queries = np.asarray(embed(list(questions)), dtype=np.float32)
    best = np.full(len(questions), -1.0, dtype=np.float32)
    for start in range(0, len(vectors), 65536):  # bounded memory on large indexes
        block = vectors[start:start + 65536] @ queries.T
        best = np.maximum(best, block.max(axis=0))
    return [float(x) for x in best]


def calibrate(embed: Callable[[list[str]], np.ndarray], vectors: np.ndarray, titles: Sequence[str],
              seed: int = 0) -> dict[str, Any] | None:
    """The index's abstention threshold and its rates, or None with fewer than MIN_TITLES titled documents."""
    questions = title_questions(titles, seed)
    if len(questions) < MIN_TITLES or len(vectors) == 0:
        return None
    inside = best_cosines(embed, vectors, questions)
    outside = best_cosines(embed, vectors, off_topic_questions())
    split = best_split(inside, outside)
    # A title question names its document, so it sits closer to the index than a real user's question does;
    # the balanced cut (midway in the gap) would decline real ones. Keep the off-topic questions it declines,
    # but move the cut down to just above the highest of them.
    below = [x for x in outside if x < split["threshold"]]
    cut = min(split["threshold"], max(below) + MARGIN) if below else split["threshold"]
    return {"threshold": round(cut, 4), "answered_in_domain": round(float(np.mean(np.asarray(inside) >= cut)), 4),
            "declined_off_topic": round(float(np.mean(np.asarray(outside) < cut)), 4),
            "n_in_domain": len(inside), "n_off_topic": len(outside), "balanced_threshold": split["threshold"],
            "score": "best dense cosine", "in_domain": "'What is TITLE?' for the index's document titles",
            "off_topic": OFF_TOPIC_FILE.name}


def fit_platt(in_domain: Sequence[float], off_topic: Sequence[float], steps: int = 50) -> tuple[float, float]:
    """(scale, bias) of Platt scaling, P(in-domain | score) = sigmoid(scale * score + bias): the logistic
    regression of in-domain (1) vs off-topic (0) on the score, both sets weighted equally, with Platt's smoothed
    targets (1 - 1/(n+2) and 1/(n+2)) so that separable sets give a finite fit. Newton's method on the
    standardized score; deterministic."""
    inside, outside = np.asarray(in_domain, dtype=float), np.asarray(off_topic, dtype=float)
    if not len(inside) or not len(outside):
        raise ValueError("Platt scaling needs in-domain and off-topic scores")
    x = np.concatenate([inside, outside])
    mean, spread = float(x.mean()), float(x.std()) or 1.0
    z = (x - mean) / spread
    target = np.concatenate([np.full(len(inside), (len(inside) + 1) / (len(inside) + 2)),
                             np.full(len(outside), 1 / (len(outside) + 2))])
    weight = np.concatenate([np.full(len(inside), 0.5 / len(inside)), np.full(len(outside), 0.5 / len(outside))])
    design = np.stack([z, np.ones_like(z)], axis=1)
    theta = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        gradient = design.T @ (weight * (p - target))
        hessian = (design * (weight * p * (1 - p))[:, None]).T @ design + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    scale = theta[0] / spread
    return float(scale), float(theta[1] - scale * mean)


def relevance(calibration: dict[str, Any], score: float | np.ndarray) -> float | np.ndarray:
    """The calibrated P(in-domain) of a reranker score (a relevance calibration's Platt scale and bias)."""
    return 1.0 / (1.0 + np.exp(-(calibration["scale"] * np.asarray(score, dtype=float) + calibration["bias"])))


def calibrate_relevance(in_domain: Sequence[float], off_topic: Sequence[float],
                        held_out_off_topic: Sequence[float] = ()) -> dict[str, Any]:
    """A reranker's relevance calibration from its best-passage scores of in-domain and off-topic questions:
    Platt scaling to a probability (fit_platt), then the probability cut that best separates the two sets
    (best_split), with its rates, and the share of `held_out_off_topic` questions (not fitted on) it declines."""
    scale, bias = fit_platt(in_domain, off_topic)
    fitted = {"scale": round(scale, 6), "bias": round(bias, 6)}
    split = best_split(relevance(fitted, in_domain), relevance(fitted, off_topic))
    out = {**fitted, **split}
    if len(held_out_off_topic):
        declined = relevance(fitted, held_out_off_topic) < split["threshold"]
        out["held_out_off_topic"] = {"n": len(held_out_off_topic), "declined": round(float(np.mean(declined)), 4)}
    return out


def threshold(setting: float | str, manifest: dict[str, Any], query_encoder_card: dict[str, Any] | None = None,
              ) -> float:
    """The threshold in force: a number given in the config, else the calibration of the question encoder in use
    (a tuned query encoder's own, in its card, or the index's, in its manifest), else the fallback."""
    if setting != "auto":
        return float(setting)
    if query_encoder_card is not None:
        # A tuned query encoder moved the question side: its cut was calibrated with it (ragqa.query_tuning).
        tuned = (query_encoder_card.get("abstention") or {}).get("threshold")
        if isinstance(tuned, int | float):
            return float(tuned)
    calibrated = (manifest.get("abstention") or {}).get("threshold")
    return float(calibrated) if isinstance(calibrated, int | float) else FALLBACK_THRESHOLD
