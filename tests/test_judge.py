"""The offline faithfulness judge: pair generation, windowing, a tiny trained judge, loading rules, CLI."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from ragqa.errors import RagqaError
from ragqa.judge.pairs import (
    apply_swap,
    is_heldout,
    load_docs,
    make_pairs,
    split_docs,
    swap_condition,
    swap_number,
    swap_polarity,
    swap_site,
)
from ragqa.judge.text import split_sentences, windows
from conftest import STARTER, chat_server, run_cli

WINDOW = ("Scabies is caused by a tiny mite that burrows into the skin. It spreads by close skin contact. "
          "Itching is worst at night and affects the hands and wrists. Treatment is permethrin cream applied "
          "twice, 7 days apart.")
NAMES = ["Scabies", "Psoriasis", "Rosacea"]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def test_each_swap_changes_the_fact():
    rng = random.Random(0)
    sentence = "Itching is worst at night and affects the hands and wrists."
    site = swap_site(sentence, WINDOW, rng)
    new_site = (_words(site) - _words(sentence)).pop()
    assert site != sentence and new_site not in _words(WINDOW)

    condition = swap_condition("Scabies is caused by a tiny mite.", WINDOW, NAMES, rng)
    assert condition.split()[0] in {"Psoriasis", "Rosacea"} and condition.endswith("is caused by a tiny mite.")

    number = swap_number("Treatment is permethrin cream applied twice, 7 days apart.", WINDOW, rng)
    new_number = (_words(number) - _words(WINDOW)).pop()
    assert new_number.isdigit() and new_number != "7"

    assert swap_polarity("Scabies is not a sign of poor hygiene.", rng) == "Scabies is a sign of poor hygiene."
    negated = swap_polarity("It spreads by close skin contact and can affect anyone.", rng)
    assert negated in {"It spreads by close skin contact and cannot affect anyone."}


def test_swaps_refuse_when_nothing_to_swap():
    rng = random.Random(0)
    assert swap_site("Treatment is permethrin cream.", WINDOW, rng) is None
    assert swap_number("Treatment is permethrin cream.", WINDOW, rng) is None
    assert swap_condition("Treatment is permethrin cream.", WINDOW, NAMES, rng) is None
    # A replacement the window already mentions would not contradict it: only absent ones are used.
    assert swap_condition("Scabies itches.", "Scabies, psoriasis and rosacea itch.", NAMES, rng) is None
    assert apply_swap("polarity", "Moisturize daily with a thick cream.", WINDOW, NAMES, rng) is None


def test_pairs_are_labelled_as_stated():
    docs = load_docs([STARTER / "passages.jsonl"])[:12]
    pairs = make_pairs(docs, seed=3)
    assert pairs == make_pairs(docs, seed=3)  # deterministic
    by_label = {label: [p for p in pairs if p.label == label] for label in ("entailment", "neutral", "contradiction")}
    assert all(len(v) > 10 for v in by_label.values())
    own = {d.id: split_sentences(d.text) for d in docs}
    for p in by_label["entailment"]:
        assert p.hypothesis in p.premise and p.hypothesis in own[p.doc_id]
    for p in by_label["contradiction"]:
        assert p.hypothesis not in p.premise
        # The twin differs from one sentence of the window by a small edit only.
        originals = [s for s in split_sentences(p.premise) if len(_words(s) ^ _words(p.hypothesis)) <= 4]
        assert originals, p
    condition_of = {d.id: d.group for d in docs}
    for p in by_label["neutral"]:
        assert p.hypothesis not in own[p.doc_id]
        assert not any(p.hypothesis == s for d in docs if d.group == condition_of[p.doc_id] for s in own[d.id])
    assert {p.kind for p in by_label["contradiction"]} == {"condition", "site", "number", "polarity"}


def test_heldout_split_is_by_condition_and_stable():
    docs = load_docs([STARTER / "passages.jsonl"])
    train, held = split_docs(docs, 0.2)
    assert held and train
    assert not {d.group for d in train} & {d.group for d in held}
    assert all(is_heldout(d.group, 0.2) for d in held)
    assert is_heldout("psoriasis", 0.2) == is_heldout("psoriasis", 0.2)


def test_long_passage_windows_fit_and_overlap():
    from transformers import AutoTokenizer

    from ragqa.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm").location)
    sentences = [f"Sentence number {i} says that lesion {i} appears on the skin of patient {i}." for i in range(40)]
    text = " ".join(sentences)
    out = windows(text, tokenizer, budget=64, overlap=1)
    assert len(out) > 5
    assert all(len(tokenizer.tokenize(w)) <= 64 for w in out)
    assert all(s in " ".join(out) for s in sentences)  # nothing lost
    for a, b in zip(out, out[1:], strict=False):  # neighbours share a sentence
        assert split_sentences(a)[-1] == split_sentences(b)[0]
    giant = "word " * 300 + "end."
    cut = windows(giant, tokenizer, budget=50)
    assert len(cut) > 1 and all(len(tokenizer.tokenize(w)) <= 50 for w in cut)


def test_judge_data_is_read_like_every_jsonl_file(tmp_path):
    """The judge corpus and the NLI file go through files.iter_jsonl, with the corpus' one-line errors: a line
    that is not an object, bad JSON or bad UTF-8 names the file and the line (a list once crashed on .get)."""
    from ragqa.judge.train import read_nli

    listed = tmp_path / "listed.jsonl"
    listed.write_text('{"text": "Acne is common.", "title": "Acne"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(RagqaError, match=r"judge corpus .*listed\.jsonl: line 2 is a JSON list, expected a passage"):
        load_docs([listed])
    broken = tmp_path / "nli.jsonl"
    broken.write_bytes(b'{"premise": "a", "hypothesis": "b", "label": "neutral"}\n{"premise": "caf\xe9"}\n')
    with pytest.raises(RagqaError, match=r"NLI file .*nli\.jsonl: line 2 is not valid UTF-8"):
        read_nli(broken)
    broken.write_text('{"premise": "a", "hypothesis": "b", "label": "neutral"}\n{"premise": \n', encoding="utf-8")
    with pytest.raises(RagqaError, match=r"NLI file .*nli\.jsonl: line 2 is not valid JSON"):
        read_nli(broken)


def test_judge_folder_without_safetensors_is_refused(tmp_path):
    from ragqa.judge import load_judge

    folder = tmp_path / "judges" / "pickled"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    (folder / "judge.json").write_text("{}")
    with pytest.raises(RagqaError, match="safetensors"):
        load_judge(str(folder))


def test_default_judge_missing_says_how_to_train(tmp_path, monkeypatch):
    from ragqa.judge import default_judge

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RagqaError, match=r"ragqa judge train --output judges/default"):
        default_judge()


# --- a tiny judge trained for real (in-domain pairs of the shipped starter corpus only) ------------------

# Hand-written dermatology examples (not from the corpus): passage, entailed claim, contradicted twin.
EXAMPLES = [
    ("Pemphigus vulgaris is a rare autoimmune blistering disease. Fragile blisters usually start in the mouth "
     "and later appear on the chest and back. It is treated with oral corticosteroids and rituximab.",
     "Fragile blisters usually start in the mouth.", "Fragile blisters usually start in the feet."),
    ("Erythema nodosum causes tender red nodules, most often on the shins. It is more common in women and "
     "often follows a streptococcal throat infection. The nodules fade over 6 weeks without scarring.",
     "The nodules fade over 6 weeks without scarring.", "The nodules fade over 30 weeks without scarring."),
    ("Lichen sclerosus is a chronic skin condition that mainly affects the genital skin. It is not contagious "
     "and cannot be passed on by sexual contact. A strong steroid ointment is the usual treatment.",
     "It is not contagious and cannot be passed on by sexual contact.",
     "It is contagious and cannot be passed on by sexual contact."),
    ("Pityriasis versicolor is a yeast infection that causes pale or brown patches on the chest and back. "
     "It is common in warm, humid climates. Antifungal shampoos applied to the skin clear it.",
     "Pityriasis versicolor is a yeast infection that causes pale or brown patches.",
     "Psoriasis is a yeast infection that causes pale or brown patches."),
    ("Chilblains are itchy, painful red swellings on the toes and fingers after exposure to cold. Keeping the "
     "feet warm prevents them, and they usually heal within 3 weeks.",
     "Keeping the feet warm prevents them.", "Keeping the feet warm does not prevent them."),
]


# `tiny_judge` (conftest.py): trained once per session, shared with test_eval_metrics.py.

# At this CI size (45 steps, ~1 min on a quiet 2-core machine) the judge separates condition-name and
# body-site swaps by a wide margin; number and polarity twins need the full recipe (see benchmarks/judge.py).
TINY_SEPARATES = [EXAMPLES[0], EXAMPLES[3]]


@pytest.mark.slow
def test_tiny_judge_ranks_entailed_above_contradicted_twin(tiny_judge):
    from ragqa.judge import load_judge

    judge = load_judge(str(tiny_judge))
    for passage, entailed, twin in TINY_SEPARATES:
        good = judge.support(entailed, [passage])
        bad = judge.support(twin, [passage])
        assert good.faithfulness > bad.faithfulness + 0.05, (entailed, good.faithfulness, twin, bad.faithfulness)


@pytest.mark.slow
def test_tiny_judge_card_and_windows_of_a_long_passage(tiny_judge):
    from ragqa.judge import load_judge

    card = json.loads((Path(tiny_judge) / "judge.json").read_text())
    assert set(card["data"]["domain"]["labels"]) == {"entailment", "neutral", "contradiction"}
    assert len(card["data"]["corpus"][0]["sha256"]) == 64 and card["data"]["nli"]["train_pairs"] == 0
    assert (Path(tiny_judge) / "model.safetensors").is_file()

    judge = load_judge(str(tiny_judge))
    passage, entailed, twin = EXAMPLES[3]  # the entailed claim is not a copied sentence: the model scores it
    filler = " ".join(f"Unrelated note {i} about clinic opening hours on weekdays." for i in range(60))
    long_passage = filler + " " + passage  # the supporting text sits far beyond the model's 64 tokens
    result = judge.support(f"{entailed} [2]", ["Sunscreen prevents sunburn.", long_passage])
    assert result.claims[0].claim == entailed and result.claims[0].passage == 1 and result.claims[0].score < 1
    assert result.faithfulness > judge.support(twin, ["Sunscreen prevents sunburn.", long_passage]).faithfulness


def test_only_whole_sentences_count_as_copies():
    from ragqa.judge.support import copied_from

    passages = ["Signs and symptoms:\nCleft palate\nPhimosis\nAnodontia",
                "It is not known whether diet changes how long the nodules last. The nodules fade over 6 weeks."]
    claims = ["Phimosis", "cleft palate; phimosis [1]", "Phimosis. Cleft palate.",
              "Diet changes how long the nodules last.", "The nodules fade over 6 weeks [2].",
              "The nodules fade over 6",
              "It is not known whether diet changes how long the nodules last, the nodules fade over 6 weeks."]
    assert copied_from(claims, passages) == [0, 0, None, None, 1, None, 1]


@pytest.mark.slow
def test_a_sentence_copied_whole_is_entailed_without_the_model(tiny_judge):
    from ragqa.judge import load_judge

    judge = load_judge(str(tiny_judge))
    passage = ("Unrelated note about clinic opening hours on weekdays. " * 30 + EXAMPLES[1][0]
               + " It is not known whether diet changes how long the nodules last.")
    copy = "the nodules fade over 6 weeks, without scarring [2]"  # case, punctuation and articles aside
    clause = "Diet changes how long the nodules last."  # copied words, but the passage does not say so
    scored = judge.support(f"{copy}. {clause}", ["Sunscreen prevents sunburn.", passage]).claims
    assert (scored[0].score, scored[0].label, scored[0].passage) == (1.0, "entailment", 1)
    assert scored[1].score < 1.0


@pytest.mark.slow
def test_cli_judge_score_prints_claims_as_json(tiny_judge):
    passage, entailed, twin = EXAMPLES[3]
    proc = run_cli("judge", "score", "--judge", str(tiny_judge), "--premise", passage,
                   "--hypothesis", f"{entailed} {twin}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["judge"] == "tiny" and [c["claim"] for c in out["claims"]] == [entailed, twin]
    assert out["claims"][0]["score"] > out["claims"][1]["score"]
    assert 0.0 <= out["faithfulness"] <= 1.0


def test_llm_judge_speaks_openai_chat_and_names_itself():
    """The LLM judge against a minimal local OpenAI-compatible server that says yes iff the claim is quoted."""
    from ragqa.judge import load_judge

    def reply(body, headers):
        prompt = body["messages"][0]["content"]
        claim = prompt.split("Claim: ")[1].split("\n")[0]
        return "Yes." if claim.rstrip(".") in prompt.split("Claim: ")[0] else "No"

    with chat_server(reply) as (url, _):
        judge = load_judge("llm", llm_url=url, llm_model="tiny-llm")
        passage, entailed, twin = EXAMPLES[0]
        result = judge.support(f"{entailed} {twin}", [passage])
        assert result.judge == f"llm:tiny-llm@{url}"
        assert [c.score for c in result.claims] == [1.0, 0.0] and result.faithfulness == 0.5
    with pytest.raises(RagqaError, match="llm_url"):
        load_judge("llm")
