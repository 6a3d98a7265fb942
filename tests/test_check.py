"""Checked answers (ask.verify): the lexical support scorer, sentence checking, the pipeline and the display."""

from __future__ import annotations

import io

import pytest

from conftest import STARTER
from ragqa.errors import RagqaError
from ragqa.judge.check import check_answer
from ragqa.judge.lexical import LexicalJudge

CHILBLAINS = ("Chilblains are itchy, painful red swellings on the toes and fingers after exposure to cold. Keeping "
              "the feet warm prevents them, and they usually heal within 3 weeks.")
SCABIES = ("Scabies is treated with permethrin 5% cream applied from the neck down to the whole body and washed off "
           "after 8 to 14 hours; the treatment is repeated after one week.")
MELANOMA = ("The ABCDE rule helps people spot warning signs: Asymmetry, where one half does not match the other; "
            "irregular Border; uneven Color with several shades; and Evolving, meaning changes in size or shape.")


def test_lexical_scorer_keeps_a_passage_sentence_and_drops_one_about_something_else():
    judge = LexicalJudge()
    result = judge.support("Scabies is treated with permethrin cream on the whole body [1]. "
                           "Acne is caused by hormones and bacteria in the hair follicles.", [CHILBLAINS, SCABIES])
    copied, other = result.claims
    assert copied.claim.startswith("Scabies is treated with permethrin cream") and "[1]" not in copied.claim
    assert copied.score >= judge.threshold and copied.passage == 1 and copied.label == "entailment"
    assert other.score < judge.threshold and other.label == "neutral"
    assert result.judge == "lexical" and not judge.can_contradict  # it never claims a contradiction


def test_lexical_negation_clash_only_when_the_denied_word_is_asserted():
    judge = LexicalJudge()
    flipped = ["Keeping the feet warm does not prevent chilblains.", "Chilblains are not painful red swellings."]
    for claim in flipped:
        assert judge.support(claim, [CHILBLAINS]).claims[0].score == 0.0, claim
    # "does not match" denies a word the claim never uses: the claim keeps its overlap.
    claim = "The warning signs of melanoma are asymmetry, irregular border, uneven color and changes in size."
    assert judge.support(claim, [MELANOMA]).claims[0].score >= judge.threshold


def test_check_drops_a_contradicted_sentence_keeps_the_supported_one_in_place():
    answer = ("Chilblains are painful red swellings on the toes after cold exposure [1].\n"
              "- Keeping the feet warm does not prevent them [1].\n"
              "- Scabies is treated with permethrin cream [2].")
    checked = check_answer(LexicalJudge(), answer, [CHILBLAINS, SCABIES])
    assert [s.supported for s in checked.sentences] == [True, False, True]
    assert [s.passage for s in checked.sentences] == [1, 1, 2]
    assert checked.text == ("Chilblains are painful red swellings on the toes after cold exposure [1].\n"
                            "- Scabies is treated with permethrin cream [2].")
    assert checked.checked_by == "lexical" and checked.supported
    assert [s.text for s in checked.removed] == ["Keeping the feet warm does not prevent them [1]."]


def test_an_unfinished_last_sentence_is_dropped_when_generation_hit_its_budget():
    answer = "Scabies is treated with permethrin cream [2]. The treatment"
    whole = check_answer(LexicalJudge(), answer, [CHILBLAINS, SCABIES])
    assert [s.supported for s in whole.sentences] == [True, True]  # a fragment's few words are in the passage
    cut = check_answer(LexicalJudge(), answer, [CHILBLAINS, SCABIES], cut_off=True)
    assert [(s.supported, s.label) for s in cut.sentences] == [(True, "entailment"), (False, "cut off")]
    assert cut.text == "Scabies is treated with permethrin cream [2]."
    finished = check_answer(LexicalJudge(), "Scabies is treated with permethrin cream [1].", [SCABIES], cut_off=True)
    assert finished.supported and finished.text.endswith("[1].")


def test_a_sentence_is_checked_against_the_passages_it_cites_and_its_citation_corrected():
    # Copied from passage 2 but numbered [1] (the small generator's most common slip): the sentence is
    # supported, so it stays, and its marker is corrected to the passage that supports it.
    miscited = check_answer(LexicalJudge(), "Scabies is treated with permethrin cream [1].", [CHILBLAINS, SCABIES])
    assert miscited.supported and miscited.text == "Scabies is treated with permethrin cream [2]."
    (only,) = miscited.sentences
    assert (only.passage, only.cited, only.citation) == (2, [1], "corrected")
    assert only.text == "Scabies is treated with permethrin cream [2]."
    # Uncited: scored against all shown passages, and the supporting one is named.
    uncited = check_answer(LexicalJudge(), "Scabies is treated with permethrin cream.", [CHILBLAINS, SCABIES])
    assert uncited.text == "Scabies is treated with permethrin cream [2]."
    assert (uncited.sentences[0].cited, uncited.sentences[0].citation) == ([], "added")
    # A right citation is left as the model wrote it; a sentence no passage supports still goes, whatever it cites.
    answer = ("Chilblains heal within 3 weeks [1]. Scabies is caused by a fungus in the lungs [2]. "
              "Scabies is treated with permethrin cream [1].")
    checked = check_answer(LexicalJudge(), answer, [CHILBLAINS, SCABIES])
    assert [(s.supported, s.citation) for s in checked.sentences] == [(True, "model"), (False, "model"),
                                                                      (True, "corrected")]
    assert checked.text == "Chilblains heal within 3 weeks [1]. Scabies is treated with permethrin cream [2]."
    # A marker the splitter leaves on its own piece belongs to the corrected sentence and goes with the correction.
    stray = check_answer(LexicalJudge(), "Scabies is treated with permethrin cream.\n[1]", [CHILBLAINS, SCABIES])
    assert stray.text.strip() == "Scabies is treated with permethrin cream [2]."


def test_sentences_that_say_nothing_new_are_dropped_however_well_supported():
    # Shapes measured on held-out MedQuAD answers: a passage's heading copied (it restates the question), a
    # sentence repeated in a loop, a question copied from a passage, a list's lead-in with no list after it.
    question = "What are the treatments for scabies ?"
    answer = ("Treatments for scabies [2]. Scabies is treated with permethrin 5% cream [2]. "
              "Scabies is treated with permethrin 5% cream [2]. How is scabies treated?\n"
              "The treatment is repeated after one week [2]. These include the following: [2]")
    checked = check_answer(LexicalJudge(), answer, [CHILBLAINS, SCABIES + " How is scabies treated? "
                                                    "These include the following: creams."], question=question)
    assert [(s.supported, s.label) for s in checked.sentences] == [
        (False, "echo"), (True, "entailment"), (False, "repeated"), (False, "no claim"), (True, "entailment"),
        (False, "no claim")]
    assert checked.text == ("Scabies is treated with permethrin 5% cream [2].\n"
                            "The treatment is repeated after one week [2].")
    # A loop inside one sentence is a repeat too; restating a yes/no question answers it, so it stays.
    loop = "Scabies cream is applied, cream is applied, cream is applied, cream is applied to the body [2]."
    assert check_answer(LexicalJudge(), loop, [SCABIES]).sentences[0].label == "repeated"
    yes_no = check_answer(LexicalJudge(), "Scabies is treated with permethrin cream [1].", [SCABIES],
                          question="Is scabies treated with permethrin cream?")
    assert yes_no.supported
    # Only heading copies go: without the question nothing is an echo.
    assert check_answer(LexicalJudge(), "Treatments for scabies [1].", [SCABIES]).supported


def test_support_scorer_falls_back_to_lexical_only_for_the_default(tmp_path, monkeypatch):
    from ragqa.config import load_config
    from ragqa.judge import support_scorer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path / "cache"))
    assert support_scorer(load_config(None)).name == "lexical"  # fresh clone: no trained judge
    assert support_scorer(load_config(None, ["judge.name=lexical"])).name == "lexical"
    with pytest.raises(RagqaError, match="unknown judge 'nope'"):  # named explicitly: never silently replaced
        support_scorer(load_config(None, ["judge.name=nope"]))


# --- the pipeline with the real small generator ---------------------------------------------------------


@pytest.fixture(scope="module")
def starter_index(tmp_path_factory, embedder):
    """A small index: 8 starter passages (acne, psoriasis, melanoma, scabies) keep the set-up quick."""
    import json

    from ragqa.config import load_config
    from ragqa.index import ingest

    folder = tmp_path_factory.mktemp("idx")
    keep = ("acne", "psoriasis", "melanoma", "scabies")
    lines = [line for line in (STARTER / "passages.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip() and json.loads(line)["id"].split(":")[1].rsplit("-", 1)[0] in keep]
    (folder / "passages.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = folder / "starter"
    ingest(load_config(None, [f"index.name={path}", f"index.corpus=[{folder / 'passages.jsonl'}]"]), embedder)
    return path


@pytest.fixture(scope="module")
def pipeline(starter_index):
    from ragqa.answer import Pipeline
    from ragqa.config import load_config

    # The lexical scorer by name: a judge a developer trained into judges/ must not change what is tested.
    cfg = load_config(None, [f"index.name={starter_index}", "ask.max_new_tokens=16", "retrieval.k=3",
                             "judge.name=lexical"])
    return Pipeline(cfg)


class Scripted:
    """Puts a fixed model reply in place of generation (our own method, not a dependency), keeping the rest."""

    def __init__(self, pipeline, reply: str):
        self.pipeline, self.reply = pipeline, reply

    def __enter__(self):
        self.pipeline._generate = lambda prompts, use_adapter, on_token, *_: [
            (self.reply, {"generate_s": 0.0, "new_tokens": 1}) for _ in prompts]
        return self.pipeline

    def __exit__(self, *exc):
        del self.pipeline._generate


@pytest.mark.slow
def test_pipeline_checks_a_real_answer_and_reports_the_check(pipeline):
    ans = pipeline.answer("How is scabies treated?")
    assert ans.checked_by == "lexical" and ans.raw_answer is not None and ans.sentences
    assert "verify_s" in ans.timings and ans.timings["total_s"] >= ans.timings["verify_s"]
    for s in ans.sentences:
        assert set(s) == {"text", "supported", "score", "passage", "label", "cited", "citation"}
        assert 0.0 <= s["score"] <= 1.0 and s["citation"] in ("model", "corrected", "added")
        if s["citation"] == "model":
            assert s["text"] in ans.raw_answer
    kept = [s["text"] for s in ans.sentences if s["supported"]]
    if kept:
        assert not ans.abstained and all(t in ans.answer for t in kept)
    else:
        assert ans.abstained and ans.withdrawn
    data = ans.to_dict()
    assert data["checked_by"] == "lexical" and data["sentences"] == ans.sentences
    closed = pipeline.answer("What is psoriasis?", retrieval="none")
    assert closed.checked_by is None and closed.raw_answer is None and "verify_s" not in closed.timings


def test_pipeline_removes_unsupported_sentences_and_abstains_when_none_is_left(pipeline):
    question = "How is scabies treated?"
    reply = ("Scabies is treated with permethrin cream applied to the whole body [1]. "
             "Eating garlic every morning cures it within a day.")
    with Scripted(pipeline, reply) as pipe:
        passages = pipe.retrieve(question, "hybrid", 3)
        assert "permethrin" in passages[0].text  # the scripted first sentence is the top passage's
        ans = pipe.answer(question)
        assert ans.answer == "Scabies is treated with permethrin cream applied to the whole body [1]."
        assert ans.raw_answer == reply and ans.citations == [1] and not ans.abstained
        assert [s["supported"] for s in ans.sentences] == [True, False]
        gone = pipe.answer_batch([question, question])  # eval's batched path checks too
        assert all(a.answer == ans.answer for a in gone)
    with Scripted(pipeline, "Eating garlic every morning cures it within a day [2].") as pipe:
        ans = pipe.answer(question)
    from ragqa.answer import ABSTAIN_TEXT

    assert ans.abstained and ans.withdrawn and ans.answer == ABSTAIN_TEXT and ans.citations == []
    assert ans.passages  # the nearest sources are still listed


def test_removed_sentences_are_shown_marked_and_never_as_markup(pipeline, monkeypatch):
    from rich.console import Console

    from ragqa import ask

    reply = ("Scabies is treated with permethrin cream applied to the whole body [1]. "
             "[bold red]Eating garlic[/bold red] cures it.")
    buffer = io.StringIO()
    monkeypatch.setattr(ask, "out", Console(file=buffer, highlight=False, soft_wrap=True, width=200))
    with Scripted(pipeline, reply) as pipe:
        ask.answer_one(pipe, "How is scabies treated?", "hybrid", 3, as_json=False)
    text = buffer.getvalue()
    assert "removed (not supported by the passages): [bold red]Eating garlic[/bold red] cures it." in text
    assert "checked by lexical: 1 of 2 sentence(s) supported" in text and "check " in text
    buffer.truncate(0)
    with Scripted(pipeline, "Eating garlic cures it.") as pipe:
        ask.answer_one(pipe, "How is scabies treated?", "hybrid", 3, as_json=False)
    text = buffer.getvalue()
    assert "is withdrawn" in text and "Nearest sources" in text and "could not find a grounded answer" in text
    # A sentence copied from passage 1 but numbered after another: streamed as the model wrote it, then the
    # corrected citation is named.
    wrong = next(n for n, p in enumerate(pipeline.retrieve("How is scabies treated?", "hybrid", 3), 1)
                 if "permethrin" not in p.text)
    buffer.truncate(0)
    with Scripted(pipeline, f"Scabies is treated with permethrin cream applied to the whole body [{wrong}].") as pipe:
        ask.answer_one(pipe, "How is scabies treated?", "hybrid", 3, as_json=False)
    text = buffer.getvalue()
    assert "citation corrected (supported by [1]): Scabies is treated with permethrin cream applied to the " \
           "whole body [1]." in text
