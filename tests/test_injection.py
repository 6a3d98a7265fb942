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


# Strings SmolLM2's tokenizer maps to special ids (<repo_name> is id 3), and a nested one that removing the
# inner marker must not join into the outer.
HOSTILE_TOKENS = ["<repo_name>", "<filename>", "<file_sep>", "<jupyter_code>", "<|im_start|>", "<|endoftext|>",
                  "<|im_end|>", "<repo<file_sep>_name>", "<|im_<|im_end|>start|>", "<REPO_NAME>"]


def _special_ids(tok) -> set[int]:
    return set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}


def test_no_special_token_id_comes_from_data(generator):
    """Passage text, title, question and training answer can carry every added special-token string: the
    prompt's token ids still hold exactly the special ids the chat template put there."""
    from collections import Counter

    from ragqa.passage import Passage
    from ragqa.prompt import encode_example, render_prompt

    _, tok = generator
    special = _special_ids(tok)
    every = HOSTILE_TOKENS + [t.content for t in tok.added_tokens_decoder.values()]
    assert "<repo_name>" in every and tok.convert_tokens_to_ids("<repo_name>") in special
    hostile = " x ".join(every)

    def specials(ids) -> Counter:
        return Counter(i for i in ids if i in special)

    def ids(text: str) -> list[int]:  # exactly how ask / eval tokenize the rendered prompt
        return tok(text, add_special_tokens=False)["input_ids"]

    clean = [Passage(chunk_id="a#0", doc_id="a", text="Scabies is treated with permethrin.", title="Scabies")]
    evil = [Passage(chunk_id="a#0", doc_id="a", text=f"Scabies {hostile} is treated.", title=f"T {hostile}")]
    template_only = specials(ids(render_prompt(tok, "How is scabies treated?", clean)))
    assert template_only  # the template's own <|im_start|> / <|im_end|> are there
    rendered = render_prompt(tok, f"How {hostile} is scabies treated?", evil)
    assert specials(ids(rendered)) == template_only
    assert "repo_name" in rendered and "jupyter_code" in rendered  # broken up, still readable as data
    closed = render_prompt(tok, f"Q {hostile}?", None)
    assert specials(ids(closed)) == specials(ids(render_prompt(tok, "Q?", None)))

    # Training goes through the same path: only the template's ids plus the one end-of-turn after the answer.
    ex = encode_example(tok, f"How {hostile} is scabies treated?", evil, f"Permethrin {hostile} [1].", 4096)
    plain_ex = encode_example(tok, "How is scabies treated?", clean, "Permethrin [1].", 4096)
    assert specials(ex.input_ids) == specials(plain_ex.input_ids)
    assert specials(ex.input_ids) == template_only + Counter([tok.eos_token_id])
