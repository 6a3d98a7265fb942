"""The shipped starter corpus is well-formed and every Q&A pair is grounded in a passage."""

import json

from conftest import STARTER


def _rows(name):
    lines = (STARTER / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_passages_schema_and_size():
    passages = _rows("passages.jsonl")
    assert len(passages) >= 40
    assert len({p["condition"] for p in passages}) >= 25
    assert len({p["id"] for p in passages}) == len(passages)
    for p in passages:
        assert set(p) == {"id", "title", "condition", "source", "url", "text"}
        assert p["title"].strip() and p["source"].strip()
        assert len(p["text"].split()) >= 100


def test_qa_cites_existing_passages():
    ids = {p["id"] for p in _rows("passages.jsonl")}
    qa = _rows("qa.jsonl")
    assert len(qa) >= 80
    assert len({q["id"] for q in qa}) == len(qa)
    for q in qa:
        assert q["question"].strip() and q["answer"].strip()
        assert q["gold_passage_ids"] and set(q["gold_passage_ids"]) <= ids
