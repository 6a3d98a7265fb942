"""Failure-mode detectors: pure functions of a question and an answer (or one of its sentences).

Each says whether text shows one failure the small generator is prone to:
    echo_or_short(question, answer) -- under MIN_WORDS words (outside yes/no questions) or mostly the question
    echoes(question, text)          -- its words are mostly the question's (it restates instead of answering)
    repetition(text)                -- a degenerate loop: the same word n-gram again and again
    cites(answer)                   -- at least one [n] passage marker
`ragqa eval` counts them per row; the answer check (ragqa.judge.check) drops sentences that echo the question
or loop, so they live beside the judge rather than in the evaluation code.
"""

from __future__ import annotations

from collections import Counter

from ragqa.judge.text import normalize
from ragqa.prompt import CITATION_RE

MIN_WORDS = 5
"""Shorter answers are a failure unless the question asks yes or no."""
ECHO_SHARE = 0.8
"""An answer whose words are at least this share question words mostly repeats the question."""
LOOP_N, LOOP_REPEATS = 3, 4
"""A loop: some word 3-gram occurring 4 or more times (fluent answers of a few sentences repeat a 3-gram
two or three times at most; a generator stuck in a loop repeats it until the token limit)."""

_YES_NO_STARTS = frozenset(
    "is are am was were do does did can could should would will shall may might must has have had isn't aren't "
    "don't doesn't can't won't".split())


def words(text: str) -> list[str]:
    """The normalized words of a text (ragqa.judge.text.normalize: no case, punctuation, articles, markers)."""
    return normalize(text).split()


def is_yes_no(question: str) -> bool:
    """A question asking yes or no: it opens with an auxiliary verb ("Is acne contagious?")."""
    opening = (question or "").strip().lower().split()
    return bool(opening) and opening[0] in _YES_NO_STARTS


def echoes(question: str, text: str) -> bool:
    """True when at least ECHO_SHARE of the text's words are the question's: it restates the question."""
    said = words(text)
    asked = set(words(question))
    return bool(said) and sum(w in asked for w in said) / len(said) >= ECHO_SHARE


def echo_or_short(question: str, answer: str) -> bool:
    """True for an answer under MIN_WORDS words (a yes/no question may be answered briefly) or one whose
    words are mostly the question's (it repeats the question instead of answering it)."""
    said = words(answer)
    if len(said) < MIN_WORDS and not (is_yes_no(question) and said):
        return True
    return echoes(question, answer)


def repetition(text: str, n: int = LOOP_N, repeats: int = LOOP_REPEATS) -> bool:
    """True when some word n-gram occurs `repeats` or more times: a degenerate repetition loop."""
    said = words(text)
    grams = Counter(tuple(said[i : i + n]) for i in range(len(said) - n + 1))
    return bool(grams) and max(grams.values()) >= repeats


def cites(answer: str) -> bool:
    """True when the answer carries at least one [n] citation marker."""
    return CITATION_RE.search(answer or "") is not None
