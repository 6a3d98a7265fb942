"""Per-answer metrics on hand-made cases with known answers (real ragas metrics, real local embedder)."""

from __future__ import annotations

import pytest

from ragqa.evaluate.metrics import Scorer, normalize, token_f1

QUESTION = {
    "id": "t:1",
    "question": "How is scabies treated?",
    "answer": "Scabies is treated with permethrin 5% cream applied to the whole body and repeated after a week; "
              "close contacts are treated at the same time.",
    "gold_passage_ids": ["starter:scabies-2"],
}
GOLD = {"doc_id": "starter:scabies-2", "chunk_id": "starter:scabies-2#0", "title": "Scabies: treatment",
        "text": "Scabies is treated with permethrin 5% cream applied from the neck down to the whole body and "
                "washed off after 8 to 14 hours; the treatment is repeated after one week. Everyone in the "
                "household and close contacts should be treated at the same time, even without itching."}
OTHER = {"doc_id": "starter:acne-1", "chunk_id": "starter:acne-1#0", "title": "Acne",
         "text": "Acne vulgaris is a very common condition of the hair follicles and their oil glands."}
FAITHFUL = "Scabies is treated with permethrin 5% cream on the whole body, repeated after one week, and close " \
           "contacts are treated at the same time [1]."
CONTRADICTING = "Scabies needs no treatment: it always goes away on its own and contacts never need creams."


@pytest.fixture(scope="module")
def scorer(embedder):
    return Scorer(embedder)


def test_token_f1_and_normalize():
    assert normalize("The Cream, [1] applied!") == "cream applied"
    assert token_f1("the permethrin cream", "Permethrin cream.") == 1.0
    assert token_f1("", "") == 1.0 and token_f1("", "cream") == 0.0
    assert token_f1("cream only", "permethrin cream") == pytest.approx(0.5)


def test_faithful_answer_beats_contradicting_one(scorer):
    record = {"passages": [GOLD, OTHER], "abstained": False}
    good, good_fail = scorer.score(QUESTION, {**record, "answer": FAITHFUL})
    bad, bad_fail = scorer.score(QUESTION, {**record, "answer": CONTRADICTING})
    assert good_fail == {} and bad_fail == {}
    for metric in ("token_f1", "rouge_l", "bertscore", "semantic_similarity", "string_similarity"):
        assert 0.0 <= bad[metric] < good[metric] <= 1.0, metric
    assert good["semantic_similarity"] > 0.8
    # Retrieval metrics come from the passages, not the answer: gold ranked first of two.
    assert good["context_precision"] == pytest.approx(0.5) and good["context_recall"] == 1.0
    assert good["mrr"] == 1.0
    swapped, _ = scorer.score(QUESTION, {**record, "answer": FAITHFUL, "passages": [OTHER, GOLD]})
    assert swapped["mrr"] == 0.5 and swapped["context_precision"] < good["context_precision"] + 1e-9


def test_exact_answer_containment(scorer):
    row = {**QUESTION, "answer": "Permethrin cream."}
    hit, _ = scorer.score(row, {"answer": "Use permethrin cream, twice.", "passages": []})
    miss, _ = scorer.score(row, {"answer": "Use an antibiotic.", "passages": []})
    assert hit["contains_answer"] == 1.0 and miss["contains_answer"] == 0.0


def test_empty_answer_scores_zero_and_is_not_dropped(scorer):
    scores, failures = scorer.score(QUESTION, {"answer": "", "passages": [OTHER], "abstained": False})
    for metric in ("token_f1", "rouge_l", "bertscore", "string_similarity", "contains_answer"):
        assert scores[metric] == 0.0, metric
    assert scores["context_recall"] == 0.0 and scores["mrr"] == 0.0
    assert failures == {}


def test_closed_book_answers_have_no_retrieval_metrics(scorer):
    scores, _ = scorer.score(QUESTION, {"answer": FAITHFUL, "passages": []})
    assert "context_recall" not in scores and "nli_faithfulness" not in scores
    assert scores["abstained"] == 0.0


class _BrokenJudge:
    """An NLI judge whose output lacks a faithfulness number: the failure must be counted."""

    name = "broken"

    def support(self, answer, passages):
        return {"claims": []}


def test_judge_failures_are_recorded(embedder):
    scorer = Scorer(embedder, nli_judge=_BrokenJudge())
    scores, failures = scorer.score(QUESTION, {"answer": FAITHFUL, "passages": [GOLD], "abstained": False})
    assert scores["nli_faithfulness"] is None
    assert failures["nli_faithfulness"].startswith("error: ValueError")


@pytest.mark.slow
def test_nli_judge_faithful_vs_contradicting(embedder, tiny_judge):
    """A judge trained in the session (conftest), so this runs on a clean clone, not only where one was trained."""
    from ragqa.judge import load_judge

    scorer = Scorer(embedder, nli_judge=load_judge(str(tiny_judge)))
    record = {"passages": [GOLD, OTHER], "abstained": False}
    good, good_fail = scorer.score(QUESTION, {**record, "answer": FAITHFUL})
    bad, bad_fail = scorer.score(QUESTION, {**record, "answer": CONTRADICTING})
    assert good_fail == {} and bad_fail == {}
    # measured with this seeded recipe: 0.45 vs 0.04
    assert good["nli_faithfulness"] > bad["nli_faithfulness"] + 0.2, (good["nli_faithfulness"],
                                                                      bad["nli_faithfulness"])
    empty, failures = scorer.score(QUESTION, {**record, "answer": ""})
    assert empty["nli_faithfulness"] is None and failures["nli_faithfulness"] == "nan"


@pytest.mark.slow
def test_local_llm_judge_counts_every_outcome(embedder):
    """The 135M generator as a ragas judge: every metric asked gives a number or a counted failure, never a
    silent gap or a made-up 0. With 24 new tokens its (greedy) reply cannot hold ragas' JSON, so both are
    counted parse failures, and the report counts them as such."""
    from ragqa.errors import RagqaError
    from ragqa.evaluate.metrics import make_llm_judge
    from ragqa.evaluate.report import summarize

    with pytest.raises(RagqaError, match="judge_metrics"):
        Scorer(embedder, llm=object(), llm_metrics=["llm_nonsense"])
    llm = make_llm_judge("local:smollm2-135m", device="cpu", max_new_tokens=24)
    asked = ["llm_context_recall", "llm_faithfulness"]
    scorer = Scorer(embedder, llm=llm, llm_metrics=asked)
    scores, failures = scorer.score(QUESTION, {"answer": FAITHFUL, "passages": [GOLD], "abstained": False})
    assert {m: scores[m] for m in asked} == {m: None for m in asked}
    assert failures == {m: "parse" for m in asked}  # and nothing else failed
    assert "llm_answer_relevancy" not in scores  # only the metrics asked for run
    record = {"qid": QUESTION["id"], "config": "rag", "scores": scores, "failures": failures}
    table = summarize([record], ["rag"], n_resamples=10)["metrics"]
    for metric in asked:
        assert table[metric]["rag"]["n"] == 0 and table[metric]["rag"]["failures"] == {"parse": 1}, metric
    assert table["token_f1"]["rag"]["n"] == 1 and table["token_f1"]["rag"]["failures"] == {}


def test_correctness_against_the_reference_for_every_row(embedder):
    """ref_support scores answer sentences against the reference, with no passages needed (closed-book rows)."""
    from ragqa.judge.lexical import LexicalJudge

    scorer = Scorer(embedder, ref_judge=LexicalJudge())
    mixed = FAITHFUL + " Antibiotic tablets taken for a month clear the mites."
    good, good_fail = scorer.score(QUESTION, {"answer": FAITHFUL, "passages": []})
    half, _ = scorer.score(QUESTION, {"answer": mixed, "passages": []})
    bad, _ = scorer.score(QUESTION, {"answer": CONTRADICTING, "passages": []})
    assert good["ref_support"] == 1.0 and half["ref_support"] == 0.5 and bad["ref_support"] == 0.0
    assert "ref_contradiction" not in good and "ref_contradiction" not in good_fail  # lexical: cannot say it
    abstained, _ = scorer.score(QUESTION, {"answer": "I could not find it.", "passages": [GOLD], "abstained": True})
    assert "ref_support" not in abstained


def test_checked_answers_get_raw_metrics_and_failure_modes(scorer):
    raw = FAITHFUL.replace("[1]", "") + " Eating garlic cures it."
    sentences = [{"text": FAITHFUL, "supported": True, "citation": "added"},
                 {"text": "Eating garlic cures it.", "supported": False}]
    record = {"answer": FAITHFUL, "raw_answer": raw, "sentences": sentences, "passages": [GOLD], "abstained": False}
    scores, failures = scorer.score(QUESTION, record)
    assert failures == {}
    assert scores["token_f1_raw"] == pytest.approx(token_f1(raw, QUESTION["answer"]))
    assert scores["token_f1_raw"] < scores["token_f1"]
    assert scores["check_removed"] == 0.5 and scores["withdrawn"] == 0.0
    assert scores["echo_or_short"] == 0.0 and scores["repetition"] == 0.0 and scores["cites"] == 1.0
    # The model cited nothing; the check added the marker: both are reported.
    assert scores["cites_raw"] == 0.0 and scores["check_recited"] == 1.0
    withdrawn, _ = scorer.score(QUESTION, {**record, "answer": "I could not find it.", "abstained": True})
    assert withdrawn["withdrawn"] == 1.0 and "echo_or_short" not in withdrawn and "cites" not in withdrawn
    closed, _ = scorer.score(QUESTION, {"answer": "Permethrin.", "passages": []})
    assert closed["echo_or_short"] == 1.0 and "cites" not in closed and "withdrawn" not in closed
