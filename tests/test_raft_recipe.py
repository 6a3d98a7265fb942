"""The dermatology RAFT recipe's data: a document-disjoint split, hard negatives from the same document,
targets sized to the answer budget that cite the gold passage, and eval's default question set."""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT
from ragqa.config import load_config
from ragqa.errors import RagqaError

# Three conditions (documents), two passages each: what it is, and how it is treated.
CONDITIONS = {
    "scabies": ("Scabies is an itchy skin infestation by the mite Sarcoptes scabiei that burrows under the skin.",
                "Scabies is treated with permethrin cream applied from the neck down; close contacts are treated too."),
    "rosacea": ("Rosacea is a long-term skin condition with facial redness, flushing and small visible vessels.",
                "Rosacea is treated with topical metronidazole or ivermectin and by avoiding triggers such as heat."),
    "psoriasis": ("Psoriasis is an immune disease that causes thick red scaly plaques on elbows, knees and scalp.",
                  "Psoriasis is treated with topical steroids, vitamin D creams, light therapy or biologic drugs."),
}


def _qa_rows():
    rows = []
    for name, (what, treat) in CONDITIONS.items():
        rows.append({"id": f"{name}-what", "doc_id": name, "question": f"What is {name}?", "answer": what,
                     "gold_passage_ids": [f"{name}-1"]})
        rows.append({"id": f"{name}-treat", "doc_id": name, "question": f"How is {name} treated?", "answer": treat,
                     "gold_passage_ids": [f"{name}-2"]})
    return rows


@pytest.fixture(scope="module")
def tiny_medquad(tmp_path_factory):
    """A six-passage index and its Q&A file with doc_id and gold passage ids, like medquad-derm-qa.jsonl."""
    from ragqa.index import ingest

    root = tmp_path_factory.mktemp("raft")
    corpus = root / "passages.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"{name}-{i + 1}", "title": name.title(), "text": text}) + "\n"
                              for name, texts in CONDITIONS.items() for i, text in enumerate(texts)))
    qa = root / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in _qa_rows()))
    index = root / "index"
    ingest(load_config(None, [f"index.name={index}", "model.device=cpu", f"index.corpus=[{corpus}]"]))
    return qa, index


def _rows(n_docs: int, per_doc: int, with_group: bool = True):
    from ragqa.train.data import QARow

    return [QARow(f"d{d}-q{q}", f"question {d} {q}", "answer", [], f"d{d}" if with_group else None)
            for d in range(n_docs) for q in range(per_doc)]


def test_document_split_keeps_every_document_on_one_side():
    from ragqa.train.data import split_rows

    rows = _rows(40, 3) + _rows(1, 7)  # uneven document sizes
    train, val = split_rows(rows, 0.2, seed=0, by="document")
    assert not {r.group for r in train} & {r.group for r in val}
    assert len(train) + len(val) == len(rows)
    assert 0.15 <= len(val) / len(rows) <= 0.3
    again = split_rows(list(reversed(rows)), 0.2, seed=0, by="document")[1]
    assert [r.id for r in again] == [r.id for r in val]  # deterministic, independent of file order
    assert split_rows(rows, 0.2, seed=1, by="document")[1] != val
    # auto: by document when every row has one, by question otherwise
    assert [r.id for r in split_rows(rows, 0.2, seed=0, by="auto")[1]] == [r.id for r in val]
    mixed = _rows(40, 3) + _rows(1, 1, with_group=False)
    t, v = split_rows(mixed, 0.2, seed=0, by="auto")
    assert {r.group for r in t} & {r.group for r in v}  # a question split mixes documents
    with pytest.raises(RagqaError, match="doc_id"):
        split_rows(mixed, 0.2, seed=0, by="document")


def test_the_medquad_split_is_document_disjoint(shared_data):
    from ragqa.train.data import load_qa, split_rows

    rows, _ = load_qa([str(shared_data / "medquad-derm-qa.jsonl")])
    assert all(r.group for r in rows)
    train, val = split_rows(rows, 0.2, seed=0, by="auto")
    assert not {r.group for r in train} & {r.group for r in val}
    assert len(val) >= 200  # enough validation questions for the matrix


def test_trim_answer_keeps_whole_sentences_within_the_budget(tokenizer):
    from ragqa.train.data import trim_answer

    answer = ("What is lamellar ichthyosis? Key Points\n - Lamellar ichthyosis is a rare genetic skin condition. "
              "- Babies are born in a shiny membrane. - The skin later forms large dark scales. Treatment keeps the "
              "skin moist.")
    size = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert trim_answer(answer, tokenizer, None) == answer
    short = trim_answer(answer, tokenizer, 24)
    assert short == "- Lamellar ichthyosis is a rare genetic skin condition. - Babies are born in a shiny membrane."
    assert size(short) <= 24
    assert trim_answer(answer, tokenizer, 1000).endswith("Treatment keeps the skin moist.")
    first_only = trim_answer(answer, tokenizer, 5)  # the first sentence alone is longer: cut to the budget in words
    assert first_only.startswith("Lamellar") and 0 < size(first_only) <= 5


@pytest.fixture(scope="module")
def tokenizer():
    from ragqa.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def _decoded_examples(qa, index, tokenizer, *sets):
    from ragqa.train.data import build_data

    cfg = load_config(None, [f"train.data=[{qa}]", f"index.name={index}", "model.device=cpu", "train.context_k=2",
                             "train.val_fraction=0.34", "train.max_seq_len=512", *sets])
    data = build_data(cfg, tokenizer, use_cache=False, show_progress=False)
    out = []
    for e in data.train + data.val:
        target = tokenizer.decode([t for t in e.labels if t != -100], skip_special_tokens=True)
        out.append((e, target))
    return data, out


def test_targets_cite_the_gold_passage_among_same_document_negatives(tiny_medquad, tokenizer):
    qa, index = tiny_medquad
    data, examples = _decoded_examples(qa, index, tokenizer, "train.raft_gold_prob=1.0",
                                       "train.same_document_negatives=1", "train.target_tokens=40")
    assert not {i.split("-")[0] for i in data.split["train"]} & {i.split("-")[0] for i in data.split["val"]}
    answers = {r["id"]: r for r in _qa_rows()}
    for e, target in examples:
        row = answers[e.id]
        gold = row["gold_passage_ids"][0]
        gold_at = [c.split("#")[0] for c in e.context_ids].index(gold)
        assert e.gold_in_context
        assert re.search(rf"\[{gold_at + 1}\]\.?\s*$", target), target  # the target cites the gold passage
        assert target.replace(f" [{gold_at + 1}]", "").strip() == row["answer"]
        sibling = f"{row['doc_id']}-{'2' if gold.endswith('-1') else '1'}"
        assert sibling in [c.split("#")[0] for c in e.context_ids]  # the same condition's other passage


def test_targets_keep_list_items_however_short_with_their_bullets(tokenizer):
    """MedQuAD flattens lists into ' - ' runs; a target that kept only the lead-in taught the model to write
    "These resources address ... of X:" and no list."""
    from ragqa.judge.text import split_units
    from ragqa.train.data import cite_target, trim_answer

    answer = ("These resources address the diagnosis or management of Aarskog-Scott syndrome: - Genetic Testing "
              "Registry: Aarskog syndrome - MedlinePlus Encyclopedia: Aarskog syndrome - Drug Therapy")
    assert split_units(answer) == [
        ("These resources address the diagnosis or management of Aarskog-Scott syndrome:", False),
        ("Genetic Testing Registry: Aarskog syndrome", True), ("MedlinePlus Encyclopedia: Aarskog syndrome", True),
        ("Drug Therapy", True)]
    assert trim_answer(answer, tokenizer, 192) == answer
    assert cite_target(answer, 2, "sentence") == (
        "These resources address the diagnosis or management of Aarskog-Scott syndrome: [2] - Genetic Testing "
        "Registry: Aarskog syndrome [2] - MedlinePlus Encyclopedia: Aarskog syndrome [2] - Drug Therapy [2]")
    headed = "Key Points - Scabies is a mite infestation. - It itches at night. Ask your doctor."
    kept = trim_answer(headed, tokenizer, 192)
    assert kept == "- Scabies is a mite infestation. - It itches at night. Ask your doctor."


def test_cite_target_marks_each_sentence_or_only_the_end():
    from ragqa.train.data import cite_target

    answer = "Scabies is a mite infestation. It itches at night. Close contacts are treated too."
    assert cite_target(answer, 2, "end") == answer[:-1] + " [2]."
    assert cite_target(answer, 2, "sentence") == ("Scabies is a mite infestation [2]. It itches at night [2]. "
                                                  "Close contacts are treated too [2].")


def test_sentence_citations_mark_every_target_sentence(tiny_medquad, tokenizer):
    from ragqa.judge.text import split_sentences

    qa, index = tiny_medquad
    _, examples = _decoded_examples(qa, index, tokenizer, "train.raft_gold_prob=1.0", "train.citations=sentence")
    answers = {r["id"]: r for r in _qa_rows()}
    for e, target in examples:
        n = [c.split("#")[0] for c in e.context_ids].index(answers[e.id]["gold_passage_ids"][0]) + 1
        sentences = split_sentences(target)
        assert len(sentences) == len(split_sentences(answers[e.id]["answer"])) >= 1
        assert all(re.search(rf"\[{n}\]\.?$", s) for s in sentences), target  # cut anywhere, it still cites
        assert target.replace(f" [{n}]", "").strip() == answers[e.id]["answer"]


def test_decline_targets_when_the_gold_passage_is_left_out(tiny_medquad, tokenizer):
    qa, index = tiny_medquad
    _, examples = _decoded_examples(qa, index, tokenizer, "train.raft_gold_prob=0.0", "train.raft_absent=decline")
    for e, target in examples:
        assert not e.gold_in_context
        assert re.fullmatch(r"The passages shown do not answer this question; the nearest is \[[12]\]\.", target)


def test_eval_asks_the_adapters_held_out_questions_by_default(tmp_path):
    from ragqa.evaluate.ablation import trained_questions

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in _qa_rows()))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "ragqa_card.json").write_text(json.dumps({"config": {"train": {"data": [str(qa)]}}}))
    assert trained_questions(str(adapter)) == str(qa)
    (adapter / "ragqa_card.json").write_text(json.dumps({"config": {"train": {"data": [str(tmp_path / "gone")]}}}))
    assert trained_questions(str(adapter)) is None
    assert trained_questions(None) is None


def test_the_raft_recipes_load():
    for name in ("smollm2-135m_lora-raft-derm_cpu.yaml", "smollm2-135m_lora-raft-derm_cuda.yaml"):
        cfg = load_config(str(ROOT / "configs" / name), [])
        assert cfg.train.split_by == "document" and cfg.index.name == "medquad"
        assert cfg.train.target_tokens <= cfg.ask.max_new_tokens
