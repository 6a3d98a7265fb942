"""Abstention calibrated per index at ingest time (ragqa/abstain.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import ROOT
from ragqa import abstain
from ragqa.config import load_config


def test_the_shipped_off_topic_set_is_large_and_varied():
    questions = abstain.off_topic_questions()
    assert len(questions) >= 100 and len(set(questions)) == len(questions)
    medical = re.compile(r"\b(skin|rash|eczema|acne|itch\w*|doctor|disease|symptoms?)\b", re.I)
    assert not [q for q in questions if medical.search(q)]


def test_best_split_separates_a_toy_in_domain_set_from_an_off_topic_set():
    split = abstain.best_split([0.55, 0.6, 0.7, 0.42], [0.1, 0.2, 0.25, 0.3])
    assert split["threshold"] == pytest.approx(0.36) and split["answered_in_domain"] == 1.0
    assert split["declined_off_topic"] == 1.0
    overlapping = abstain.best_split([0.3, 0.5, 0.6, 0.7], [0.1, 0.2, 0.35, 0.4])
    assert 0.4 < overlapping["threshold"] <= 0.5  # 3/4 answered and every off-topic one declined beats the rest
    assert overlapping["answered_in_domain"] == 0.75 and overlapping["declined_off_topic"] == 1.0


def test_relevance_calibration_separates_a_toy_in_domain_set_from_an_off_topic_set():
    """Platt scaling maps reranker scores to P(in-domain) (finite on separable sets, increasing), and the cut on
    it answers every in-domain score and declines every off-topic one, held-out ones included."""
    in_domain, off_topic = [3.1, 4.0, 5.2, 2.5, 6.0], [-2.0, -1.0, 0.5, 1.0]
    scale, bias = abstain.fit_platt(in_domain, off_topic)
    assert 0 < scale < 50 and np.isfinite(bias)
    calibration = abstain.calibrate_relevance(in_domain, off_topic, held_out_off_topic=[-0.5, 0.0, 7.0])
    assert calibration["scale"] == pytest.approx(scale, abs=1e-5)
    probability = abstain.relevance(calibration, np.array(in_domain + off_topic))
    assert np.all((probability > 0) & (probability < 1)) and np.all(np.diff(abstain.relevance(
        calibration, np.arange(-3.0, 7.0))) > 0)
    cut = calibration["threshold"]
    assert abstain.relevance(calibration, 1.0) < cut <= abstain.relevance(calibration, 2.5)
    assert calibration["answered_in_domain"] == 1.0 and calibration["declined_off_topic"] == 1.0
    assert calibration["held_out_off_topic"] == {"n": 3, "declined": round(2 / 3, 4)}  # 7.0 is in-domain-like
    assert (calibration["n_in_domain"], calibration["n_off_topic"]) == (5, 4)
    with pytest.raises(ValueError):
        abstain.fit_platt([], off_topic)


def test_threshold_in_force():
    calibrated = {"abstention": {"threshold": 0.47}}
    assert abstain.threshold("auto", calibrated) == 0.47
    assert abstain.threshold(0.2, calibrated) == 0.2
    assert abstain.threshold("auto", {"abstention": None}) == abstain.FALLBACK_THRESHOLD
    # A tuned query encoder moves the questions' cosines: its own calibrated cut applies, not the index's; a card
    # from before it had one falls back to the index's.
    assert abstain.threshold("auto", calibrated, {"abstention": {"threshold": 0.52}}) == 0.52
    assert abstain.threshold("auto", calibrated, {"name": "old"}) == 0.47
    assert abstain.threshold(0.2, calibrated, {"abstention": {"threshold": 0.52}}) == 0.2
    assert load_config(None, []).retrieval.abstain_below == "auto"
    assert load_config(None, ["retrieval.abstain_below=0.4"]).retrieval.abstain_below == 0.4


@pytest.fixture(scope="module")
def starter_index(tmp_path_factory):
    from ragqa.index import ingest

    path = tmp_path_factory.mktemp("abstain") / "starter"
    ingest(load_config(None, [f"index.name={path}", "model.device=cpu",
                              f"index.corpus=[{ROOT / 'corpora' / 'starter' / 'passages.jsonl'}]"]))
    return path


def test_ingest_calibrates_the_index_and_real_questions_fare_as_stated(starter_index):
    from ragqa.evaluate.retrieval import load_gold_rows
    from ragqa.retrieve import Retriever

    manifest = json.loads((starter_index / "manifest.json").read_text())
    cal = manifest["abstention"]
    assert cal["n_in_domain"] >= abstain.MIN_TITLES and cal["n_off_topic"] >= 100
    assert cal["declined_off_topic"] == 1.0 and cal["answered_in_domain"] == 1.0
    assert cal["threshold"] <= cal["balanced_threshold"]  # leaned toward answering (title questions are easy)
    retriever = Retriever.load(str(starter_index), embedder="minilm", device="cpu")
    vectors = retriever.store.vectors()
    encode = lambda qs: np.stack([retriever.embed_query(q) for q in qs])  # noqa: E731 - the query path of ask
    questions = [r["question"] for r in load_gold_rows(ROOT / "corpora/starter/qa.jsonl")]
    real = abstain.best_cosines(encode, vectors, questions)
    answered = np.mean(np.asarray(real) >= cal["threshold"])
    assert answered >= 0.95, answered  # the starter's own questions, which calibration never saw


def test_an_index_with_few_titles_keeps_the_fallback(tmp_path):
    from ragqa.index import ingest

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "title": f"Topic {i}", "text": f"Passage number {i}."}) + "\n"
                              for i in range(5)))
    ingest(load_config(None, [f"index.name={tmp_path / 'idx'}", "model.device=cpu", f"index.corpus=[{corpus}]"]))
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["abstention"] is None
    assert abstain.threshold("auto", manifest) == abstain.FALLBACK_THRESHOLD
