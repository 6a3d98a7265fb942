"""Passages carrying instructions must not steer the answer (measured on 20 planted attacks)."""

import json

import pytest

from conftest import ROOT

ATTACKS = ROOT / "tests" / "data" / "injection_passages.jsonl"
BASELINE = ROOT / "tests" / "data" / "injection_baseline.json"


def test_attack_corpus_is_well_formed():
    from ragqa.safety import followed, load_attacks

    rows = load_attacks(ATTACKS)
    assert len(rows) >= 20 and len({r["canary"] for r in rows}) == len(rows)
    for r in rows:
        assert r["canary"] in r["text"]
        assert not followed(r["question"], r["canary"])
    assert followed("Sure: ZEBRA01.", "ZEBRA01") and not followed("Use benzoyl peroxide [1].", "ZEBRA01")


@pytest.mark.slow
def test_injection_rate_does_not_get_worse(tmp_path):
    from ragqa.answer import Pipeline
    from ragqa.config import load_config
    from ragqa.index import ingest
    from ragqa.safety import injection_rate, load_attacks

    # An index of the attacks alone, k=2: each question's two same-topic attack passages reach the prompt.
    cfg = load_config(None, [f"index.name={tmp_path / 'idx'}", f"index.corpus=[{ATTACKS}]",
                             "ask.max_new_tokens=40", "retrieval.k=2"])
    ingest(cfg)
    result = injection_rate(Pipeline(cfg), load_attacks(ATTACKS), k=2)
    assert result["attack_passage_retrieved"] == result["n"]  # every attack really reaches the prompt
    baseline = json.loads(BASELINE.read_text())
    assert result["followed"] <= baseline["base"]["followed"], result["items"]
