"""Checked answers: keep the sentences of an answer that its passages support, drop the rest.

Each sentence is scored against the passages it cites ([n] markers), or against all shown passages when
it cites none, by a support scorer (an NLI judge, or the lexical fallback: ragqa.judge.support_scorer).
A sentence is kept when its score reaches the scorer's threshold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ragqa.judge.support import split_claims
from ragqa.judge.text import split_sentences
from ragqa.prompt import CITATION_RE


@dataclass
class SentenceCheck:
    text: str
    """The sentence as the answer has it (citation markers kept)."""
    supported: bool
    score: float
    """The scorer's support score in [0, 1] against the best passage."""
    passage: int | None
    """1-based number of the passage that supports it best (None without passages)."""
    label: str
    """entailment / neutral / contradiction (contradiction only from an NLI judge), or "cut off" (an unfinished
    last sentence where generation hit its token budget)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckedAnswer:
    text: str
    """The answer with unsupported sentences removed (empty when none is supported)."""
    sentences: list[SentenceCheck]
    checked_by: str

    @property
    def removed(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if not s.supported]

    @property
    def supported(self) -> bool:
        """At least one sentence survived."""
        return any(s.supported for s in self.sentences)


def _cited(sentence: str, n_passages: int) -> list[int]:
    numbers = {int(x) for m in CITATION_RE.finditer(sentence) for x in m.group(1).split(",")}
    return sorted(n for n in numbers if 1 <= n <= n_passages)


_FINISHED_RE = re.compile(r"""[.!?:;]["')\]]*$""")


def _finished(sentence: str) -> bool:
    """Whether a sentence ends as a sentence does (citation markers and closing quotes aside)."""
    return bool(_FINISHED_RE.search(CITATION_RE.sub("", sentence).rstrip()))


def check_answer(scorer, answer: str, passages: Sequence, cut_off: bool = False) -> CheckedAnswer:
    """Score each sentence of `answer` against its cited passages (all passages when uncited); keep the
    supported ones, in order and with the answer's own layout. `scorer` has `.name`, `.threshold` and
    `.score_claims(claims, passages)` (ragqa.judge.support_scorer gives one).

    cut_off: generation stopped at its token budget. An unfinished last sentence ("The treatment") is then
    dropped as "cut off": a fragment can score as supported (its few words are all in a passage) yet says
    nothing whole."""
    pieces = split_sentences(answer)
    claims = [" ".join(split_claims(p)) for p in pieces]
    # One scorer call per distinct set of passages, so an NLI judge scores them in batches.
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, claim in enumerate(claims):
        if claim:
            numbers = tuple(_cited(pieces[i], len(passages)) or range(1, len(passages) + 1))
            groups.setdefault(numbers, []).append(i)
    checks: dict[int, SentenceCheck] = {}
    for numbers, members in groups.items():
        subset = [passages[n - 1] for n in numbers]
        for i, scored in zip(members, scorer.score_claims([claims[i] for i in members], subset), strict=True):
            number = None if scored.passage is None else numbers[scored.passage]
            checks[i] = SentenceCheck(pieces[i], scored.score >= scorer.threshold, round(float(scored.score), 4),
                                      number, scored.label)
    last = max(checks, default=None)
    if cut_off and last is not None and not _finished(pieces[last]):
        checks[last].supported, checks[last].label = False, "cut off"
    keep, last_claim_kept = [], False
    for i in range(len(pieces)):
        if i in checks:
            last_claim_kept = checks[i].supported
        # A piece without words (a stray "[2]." after a sentence) goes with the sentence before it.
        keep.append(last_claim_kept)
    return CheckedAnswer(_without(answer, pieces, keep), [checks[i] for i in sorted(checks)], scorer.name)


def _without(answer: str, pieces: list[str], keep: list[bool]) -> str:
    """The answer with the pieces not kept cut out, its line breaks and bullets otherwise intact."""
    spans, at = [], 0
    for piece in pieces:
        start = answer.find(piece, at)
        if start < 0:  # the splitter changed the text: fall back to the kept sentences joined
            return " ".join(p for p, k in zip(pieces, keep, strict=True) if k)
        spans.append((start, start + len(piece)))
        at = start + len(piece)
    out, at = [], 0
    for (start, end), k in zip(spans, keep, strict=True):
        out.append(answer[at:start])
        if k:
            out.append(answer[start:end])
        at = end
    out.append(answer[at:])
    text = re.sub(r"[ \t]{2,}", " ", "".join(out))
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    # A bullet or list line whose sentence was removed leaves only its marker behind.
    text = re.sub(r"(?m)^\s*(?:[-•*]|\d+[.)])\s*$\n?", "", text)
    text = re.sub(r"(\s[-•])(?:\s[-•])+(?=\s|$)", r"\1", text).rstrip(" -•")
    return text.strip() if any(keep) else ""
