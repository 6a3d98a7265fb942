"""A lexical support scorer: the fallback that checks answers when no trained NLI judge is available.

A claim's score is the share of its content words (BM25's tokenization: English stopwords removed,
Snowball stems) that occur in a passage, best passage wins. It sees copying and close paraphrase, not
meaning: a swapped entity among many shared words still scores high, and it cannot tell "contradicted"
from "not stated", so it never labels a contradiction (metrics that need one report n/a). One cheap
meaning check is made: a claim whose negation ("not", "no", "never", "n't", ...) disagrees with the
passage sentence it shares most words with scores 0, so "X does not prevent Y" is not supported by
"X prevents Y" (nor the reverse).
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

_NEGATION_RE = re.compile(r"\b(?:not|no|never|none|neither|nor|cannot)\b|n't\b", re.IGNORECASE)


def _stems(texts: list[str]) -> list[set[str]]:
    from ragqa.index import bm25_tokenize  # the retriever's own tokenization: one notion of "word" in ragqa

    return [set(tokens) for tokens in bm25_tokenize(texts, return_ids=False)] if texts else []


def _negated(text: str) -> bool:
    return _NEGATION_RE.search(text) is not None


class LexicalJudge:
    """Content-word overlap of a claim with the passages (see the module docstring for what it can not see)."""

    name = "lexical"
    threshold = LEXICAL_THRESHOLD
    can_contradict = False
    """Only an NLI judge can say a claim is contradicted; this one says supported or not."""

    def score_claims(self, claims: Sequence[str], passages: Sequence) -> list[ClaimScore]:
        """Each claim's best share of content stems found in one passage (0 on a negation mismatch)."""
        texts = [passage_text(p) for p in passages]
        sentences = [split_sentences(t) for t in texts]
        flat = [s for group in sentences for s in group]
        stems = _stems(list(claims) + texts + flat)
        claim_stems, passage_stems = stems[: len(claims)], stems[len(claims) : len(claims) + len(texts)]
        sentence_stems = iter(stems[len(claims) + len(texts) :])
        per_passage = [[(s, next(sentence_stems)) for s in group] for group in sentences]
        scored = []
        for claim, words in zip(claims, claim_stems, strict=True):
            if not words or not texts:
                scored.append(ClaimScore(claim, 0.0, "neutral", None))
                continue
            shares = [len(words & p) / len(words) for p in passage_stems]
            best = max(range(len(shares)), key=shares.__getitem__)
            score = shares[best]
            closest = max(per_passage[best], key=lambda sw: len(words & sw[1]), default=(texts[best], set()))
            if _negated(claim) != _negated(closest[0]):
                score = 0.0
            label = "entailment" if score >= self.threshold else "neutral"
            scored.append(ClaimScore(claim, score, label, best, {"overlap": shares[best]}))
        return scored

    def support(self, answer: str, passages: Sequence) -> SupportResult:
        """Per-claim support of `answer` by `passages` (same result type as the NLI judges)."""
        scored = self.score_claims(split_claims(answer), passages)
        return SupportResult(self.name, sum(c.score for c in scored) / len(scored) if scored else None, scored)
