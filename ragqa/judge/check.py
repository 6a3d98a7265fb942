"""Checked answers: keep the sentences of an answer that its passages support, drop the rest.

Each sentence is scored against the passages it cites ([n] markers), or against all shown passages when
it cites none, by a support scorer (an NLI judge, or the lexical fallback: ragqa.judge.support_scorer).
A sentence is kept when its score reaches the scorer's threshold.

Citations are checked too. A small generator often copies a sentence from one passage and numbers it after
another (measured on 200 held-out MedQuAD questions: a third of the withdrawn answers were copied word for
word from a passage they did not cite). A cited sentence its passages do not support is scored against the
other shown passages as well; when one of them supports it, the sentence stays and its marker is corrected
to that passage. A kept sentence without a marker gets the one of the passage that supports it. So every
kept sentence cites the passage that was checked to support it, and `SentenceCheck.cited` keeps what the
model itself cited.

Support is not enough for a sentence to stay: one that says nothing new is dropped too, whatever its score.
That is a sentence that restates the question ("Hair Loss [1]" for "What is hair loss?": a passage's heading
copied, which any judge finds supported), one that repeats an earlier kept sentence or loops inside itself (a
degenerate repetition), a question, and a list's lead-in ("These include the following:") with no list after
it. Their labels say which ("echo", "repeated", "no claim").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ragqa.judge.failures import echoes, is_yes_no, repetition, words
from ragqa.judge.support import split_claims
from ragqa.judge.text import split_sentences
from ragqa.prompt import CITATION_RE, cite


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
    """entailment / neutral / contradiction (contradiction only from an NLI judge); or, for a sentence dropped
    whatever its support: "cut off" (an unfinished last sentence where generation hit its token budget), "echo"
    (it restates the question), "repeated" (it repeats an earlier kept sentence, or loops) or "no claim" (a
    question, or a list's lead-in with nothing after it)."""
    cited: list[int] = field(default_factory=list)
    """The passages the generated sentence cited (its [n] markers), before any correction."""
    citation: str = "model"
    """For a kept sentence: "model" (its own marker names the supporting passage), "corrected" (it cited
    another passage; the marker now names the one that supports it) or "added" (it cited none)."""

    def to_dict(self) -> dict:
        return asdict(self)


DROPPED_BECAUSE = {"cut off": "cut off at the token budget", "echo": "restates the question",
                   "repeated": "repeats what was said", "no claim": "states nothing"}
"""Why a sentence was dropped, by label; any other label means its passages do not support it."""


def dropped_because(label: str) -> str:
    return DROPPED_BECAUSE.get(label, "not supported by the passages")


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


def check_answer(scorer, answer: str, passages: Sequence, cut_off: bool = False,
                 question: str | None = None) -> CheckedAnswer:
    """Score each sentence of `answer` against its cited passages (all passages when uncited, or when its
    own do not support it); keep the supported ones, in order and with the answer's own layout, each citing
    the passage that supports it. `scorer` has `.name`, `.threshold` and
    `.score_claims(claims, passages)` (ragqa.judge.support_scorer gives one).

    cut_off: generation stopped at its token budget. An unfinished last sentence ("The treatment") is then
    dropped as "cut off": a fragment can score as supported (its few words are all in a passage) yet says
    nothing whole. question: the question asked; given, sentences that merely restate it are dropped ("echo")."""
    pieces = split_sentences(answer)
    claims = [" ".join(split_claims(p)) for p in pieces]
    everything = tuple(range(1, len(passages) + 1))
    cited = {i: _cited(pieces[i], len(passages)) for i, claim in enumerate(claims) if claim}
    checks = _score(scorer, pieces, claims, passages, {i: tuple(numbers) or everything for i, numbers in cited.items()})
    # A cited sentence its own passages do not support: is it another shown passage's sentence?
    retry = {i: everything for i, c in checks.items()
             if not c.supported and cited[i] and len(cited[i]) < len(everything)}
    for i, check in _score(scorer, pieces, claims, passages, retry).items():
        if check.supported:
            checks[i] = check
    last = max(checks, default=None)
    if cut_off and last is not None and not _finished(pieces[last]):
        checks[last].supported, checks[last].label = False, "cut off"
    _drop_empty(checks, pieces, question)
    for i, check in checks.items():
        check.cited = cited[i]
        if check.supported and check.passage not in cited[i]:
            check.citation = "corrected" if cited[i] else "added"
    keep, shown, last_claim = [], list(pieces), None
    for i in range(len(pieces)):
        if i in checks:
            last_claim = checks[i]
            if last_claim.supported and last_claim.citation != "model":
                shown[i] = last_claim.text = _recite(pieces[i], last_claim.passage)
            keep.append(last_claim.supported)
        else:
            # A piece without words (a stray "[2]." after a sentence) goes with the sentence before it, unless
            # that sentence's marker was rewritten (the stray one is then the wrong marker).
            keep.append(last_claim is not None and last_claim.supported and last_claim.citation == "model")
    return CheckedAnswer(_without(answer, pieces, keep, shown), [checks[i] for i in sorted(checks)], scorer.name)


LEAD_IN_WORDS = 15
"""A last sentence ending in a colon is a bare lead-in up to this many words; a longer one carries content
before its colon (a copied resource list: "... Genetic Testing Registry: Epidermal nevus These resources ...:")."""
_QUESTION_RE = re.compile(r"\?[\"')\]]*$")
_LEAD_IN_RE = re.compile(r":[\s.]*$")


def _bare(sentence: str) -> str:
    return CITATION_RE.sub("", sentence).strip()


def _drop_empty(checks: dict[int, SentenceCheck], pieces: list[str], question: str | None) -> None:
    """Unkeep supported sentences that add nothing (module docstring): echoes of the question, repeats and
    loops, questions, and a lead-in left last."""
    seen: set[tuple[str, ...]] = set()
    yes_no = question is not None and is_yes_no(question)
    for i in sorted(checks):
        check = checks[i]
        if not check.supported:
            continue
        said = tuple(words(pieces[i]))
        if question is not None and not yes_no and echoes(question, pieces[i]):
            check.supported, check.label = False, "echo"
        elif said in seen or repetition(pieces[i]):
            check.supported, check.label = False, "repeated"
        elif _QUESTION_RE.search(_bare(pieces[i])):
            check.supported, check.label = False, "no claim"
        seen.add(said)
    for i in sorted(checks, reverse=True):  # a lead-in stays only with something after it
        if checks[i].supported:
            if not _LEAD_IN_RE.search(_bare(pieces[i])) or len(words(pieces[i])) > LEAD_IN_WORDS:
                break
            checks[i].supported, checks[i].label = False, "no claim"


def _score(scorer, pieces: list[str], claims: list[str], passages: Sequence,
           against: dict[int, tuple[int, ...]]) -> dict[int, SentenceCheck]:
    """Score claims[i] (the words of pieces[i]) against the passages numbered against[i]: one scorer call per
    distinct set of passages, so an NLI judge scores them in batches."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, numbers in against.items():
        groups.setdefault(numbers, []).append(i)
    checks: dict[int, SentenceCheck] = {}
    for numbers, members in groups.items():
        subset = [passages[n - 1] for n in numbers]
        for i, scored in zip(members, scorer.score_claims([claims[i] for i in members], subset), strict=True):
            number = None if scored.passage is None else numbers[scored.passage]
            checks[i] = SentenceCheck(pieces[i], scored.score >= scorer.threshold, round(float(scored.score), 4),
                                      number, scored.label)
    return checks


def _recite(sentence: str, n: int) -> str:
    """The sentence with its own markers replaced by one [n] before its final full stop."""
    bare = re.sub(r"[ \t]+([.,;:!?])", r"\1", re.sub(r"[ \t]{2,}", " ", CITATION_RE.sub("", sentence))).strip()
    return cite(bare, n)


def _without(answer: str, pieces: list[str], keep: list[bool], shown: list[str]) -> str:
    """The answer with the pieces not kept cut out and each kept one as `shown` has it (its citation
    corrected), its line breaks and bullets otherwise intact."""
    spans, at = [], 0
    for piece in pieces:
        start = answer.find(piece, at)
        if start < 0:  # the splitter changed the text: fall back to the kept sentences joined
            return " ".join(p for p, k in zip(shown, keep, strict=True) if k)
        spans.append((start, start + len(piece)))
        at = start + len(piece)
    out, at = [], 0
    for (start, end), k, text in zip(spans, keep, shown, strict=True):
        out.append(answer[at:start])
        if k:
            out.append(text)
        at = end
    out.append(answer[at:])
    text = re.sub(r"[ \t]{2,}", " ", "".join(out))
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    # A bullet or list line whose sentence was removed leaves only its marker behind.
    text = re.sub(r"(?m)^\s*(?:[-•*]|\d+[.)])\s*$\n?", "", text)
    text = re.sub(r"(\s[-•])(?:\s[-•])+(?=\s|$)", r"\1", text).rstrip(" -•")
    return text.strip() if any(keep) else ""
