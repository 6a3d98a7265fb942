"""A lexical support scorer: the fallback that checks answers when no trained NLI judge is available.

A claim's score is the share of its content words (BM25's tokenization: English stopwords removed,
Snowball stems) that occur in a passage, best passage wins. It sees copying and close paraphrase, not
meaning: a swapped entity among many shared words still scores high, and it cannot tell "contradicted"
from "not stated", so it never labels a contradiction (metrics that need one report n/a). One cheap
meaning check is made: when a claim denies a word ("not", "no", "never", "n't", ... followed within a few
words by it) that the passage sentence sharing most of its words asserts, or the reverse, it scores 0, so
"warmth does not prevent chilblains" is not supported by "warmth prevents chilblains".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ragqa.judge.support import ClaimScore, SupportResult, passage_text, split_claims
from ragqa.judge.text import split_sentences

LEXICAL_THRESHOLD = 0.6
"""A claim is supported when at least this share of its content stems is in one passage. Chosen so a
sentence copied or lightly reworded from a passage passes (the small generator mostly copies) while one
that shares only the topic word or two of a passage does not."""

_NEGATION_RE = re.compile(r"\b(?:not|no|never|none|neither|nor|cannot|without)\b|n't\b", re.IGNORECASE)
_SCOPE_WORDS = 4
"""How many words after a negation cue it is taken to deny (up to the next punctuation)."""


def _stems(texts: list[str]) -> list[set[str]]:
    from ragqa.index.bm25 import bm25_tokenize  # the retriever's own tokenization: one notion of "word" in ragqa

    return [set(tokens) for tokens in bm25_tokenize(texts, return_ids=False)] if texts else []


def _negated_scope(text: str) -> str:
    """The words a negation denies: up to _SCOPE_WORDS words after each cue, within its clause."""
    scopes = []
    for match in _NEGATION_RE.finditer(text):
        clause = re.split(r"[,.;:!?()]", text[match.end():], maxsplit=1)[0]
        scopes.append(" ".join(clause.split()[:_SCOPE_WORDS]))
    return " ".join(scopes)


def _polarity_clash(claim: tuple[set[str], set[str]], sentence: tuple[set[str], set[str]]) -> bool:
    """(words, negated words) of each: does one deny a word the other asserts?"""
    (claim_words, claim_denied), (sentence_words, sentence_denied) = claim, sentence
    return bool(claim_denied & (sentence_words - sentence_denied)
                or sentence_denied & (claim_words - claim_denied))


class LexicalJudge:
    """Content-word overlap of a claim with the passages (see the module docstring for what it can not see)."""

    name = "lexical"
    threshold = LEXICAL_THRESHOLD
    can_contradict = False
    """Only an NLI judge can say a claim is contradicted; this one says supported or not."""

    def score_claims(self, claims: Sequence[str], passages: Sequence) -> list[ClaimScore]:
        """Each claim's best share of content stems found in one passage (0 on a negation clash)."""
        texts = [passage_text(p) for p in passages]
        sentences = [s for t in texts for s in split_sentences(t)]
        owner = [i for i, t in enumerate(texts) for _ in split_sentences(t)]
        units = list(claims) + sentences
        stems = iter(_stems(texts + units + [_negated_scope(u) for u in units]))
        passage_words = [next(stems) for _ in texts]
        unit_words = [next(stems) for _ in units]
        unit_denied = [next(stems) for _ in units]
        scored = []
        for c, claim in enumerate(claims):
            words = unit_words[c]
            if not words or not texts:
                scored.append(ClaimScore(claim, 0.0, "neutral", None))
                continue
            shares = [len(words & p) / len(words) for p in passage_words]
            best = max(range(len(shares)), key=shares.__getitem__)
            score = shares[best]
            mine = [len(claims) + j for j, o in enumerate(owner) if o == best]
            if mine:
                closest = max(mine, key=lambda u: len(words & unit_words[u]))
                if _polarity_clash((words, unit_denied[c]), (unit_words[closest], unit_denied[closest])):
                    score = 0.0
            label = "entailment" if score >= self.threshold else "neutral"
            scored.append(ClaimScore(claim, score, label, best, {"overlap": shares[best]}))
        return scored

    def support(self, answer: str, passages: Sequence) -> SupportResult:
        """Per-claim support of `answer` by `passages` (same result type as the NLI judges)."""
        scored = self.score_claims(split_claims(answer), passages)
        return SupportResult(self.name, sum(c.score for c in scored) / len(scored) if scored else None, scored)
