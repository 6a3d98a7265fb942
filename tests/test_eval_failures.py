"""Failure-mode detectors of `ragqa eval` on hand-made answers."""

from __future__ import annotations

import pytest

from ragqa.judge.failures import cites, echo_or_short, is_yes_no, repetition


@pytest.mark.parametrize("question, answer, failed", [
    ("What causes acne?", "What causes acne?", True),  # the question echoed back
    ("What causes acne?", "What causes acne? What causes acne.", True),
    ("What causes acne?", "Hormones.", True),  # under 5 words, not a yes/no question
    ("What causes acne?", "", True),
    ("What causes acne?", "Acne is caused by clogged hair follicles [1].", False),
    ("What causes acne?", "Acne: what causes acne is clogged follicles, hormones and bacteria.", False),
    ("Is acne contagious?", "No.", False),  # a yes/no question may be answered in a word
    ("Is acne contagious?", "No, it is not [1].", False),
    ("Is acne contagious?", "", True),
    ("Can psoriasis spread by touch?", "Can psoriasis spread by touch?", True),
])
def test_echo_or_short(question, answer, failed):
    assert echo_or_short(question, answer) is failed


def test_yes_no_questions():
    assert is_yes_no("Is rosacea curable?") and is_yes_no("does sunscreen prevent melanoma?")
    assert not is_yes_no("How is scabies treated?") and not is_yes_no("") and not is_yes_no("Island skin?")


def test_repetition_loop():
    loop = "Apply the cream to the skin. " + "Apply the cream to the skin and " * 4
    assert repetition(loop)
    assert repetition("skin " * 12)
    fluent = ("Scabies is treated with permethrin cream applied to the whole body. The treatment is repeated after "
              "one week, and close contacts are treated at the same time. Itching can last for weeks after the "
              "treatment, which does not mean the treatment failed.")
    assert not repetition(fluent)  # "the treatment" twice, "the treatment is"... at most twice
    assert not repetition("")


def test_cites():
    assert cites("Permethrin cream [1].") and cites("Both work [1, 3].")
    assert not cites("Permethrin cream.") and not cites("See reference (1).") and not cites("")
