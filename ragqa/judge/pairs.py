"""In-domain NLI pairs made from a dermatology corpus, FactCC-style (Kryscinski et al. 2020).

For a sentence S of a passage and a window W of that passage around S:
  (W, S)                                     -> entailment
  (W, S with condition / body site / number / polarity swapped) -> contradiction
  (W, a sentence of another condition's passage)               -> neutral
Every swap is checked to really change the fact: the text differs and the inserted condition, site or
number does not occur in the window. Hand-written because no maintained library generates such pairs.

Documents are split into train and held-out by their condition (all passages about one condition fall
on the same side), so the benchmark measures the judge on conditions it never saw in training.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ragqa.errors import RagqaError
from ragqa.files import iter_jsonl
from ragqa.judge.text import split_sentences

LABELS = ("entailment", "neutral", "contradiction")
SWAPS = ("condition", "site", "number", "polarity")

MIN_WORDS, MAX_WORDS = 5, 45
"""Sentences usable as hypotheses (shorter ones are fragments, longer ones crowd the window)."""
WINDOW_WORDS = 60
"""Premise windows hold at most ~60 words (~90 word pieces): with the hypothesis they fit 160 tokens."""

# Body sites, singular and plural kept apart so a swap keeps the grammar.
_SITES_SINGULAR = [
    "face", "scalp", "neck", "chest", "back", "abdomen", "groin", "mouth", "nose", "forehead", "trunk",
    "arm", "leg", "hand", "foot", "elbow", "knee", "ankle", "wrist", "finger", "toe", "lip", "eyelid",
    "armpit", "buttock", "shoulder", "palm", "sole", "cheek", "ear", "thigh", "shin",
]
_SITES_PLURAL = [
    "arms", "legs", "hands", "feet", "elbows", "knees", "ankles", "wrists", "fingers", "toes", "lips",
    "eyelids", "armpits", "buttocks", "shoulders", "palms", "soles", "cheeks", "ears", "thighs", "shins",
    "fingernails", "toenails", "nails", "eyes",
]
_SITE_RE = re.compile(r"\b(" + "|".join(sorted(_SITES_SINGULAR + _SITES_PLURAL, key=len, reverse=True)) + r")\b",
                      re.IGNORECASE)

_NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty",
                 "thirty", "forty", "fifty", "hundred"]
_NUMBER_RE = re.compile(r"(?<![\d.])\b(\d+(?:\.\d+)?)\b(?!\.\d)|\b(" + "|".join(_NUMBER_WORDS) + r")\b",
                        re.IGNORECASE)

# Polarity edits: (pattern, replacement). Negations are removed or added; a few antonyms flip.
_POLARITY = [
    (re.compile(r"\b(is|are|was|were|does|do|did|should|will|must|has|have|could) not\b", re.IGNORECASE), r"\1"),
    (re.compile(r"\b(is|are|was|were|does|do|did|should|will|must|has|have|could)n't\b", re.IGNORECASE), r"\1"),
    (re.compile(r"\bcannot\b", re.IGNORECASE), "can"),
    (re.compile(r"\bnever\b", re.IGNORECASE), "always"),
    (re.compile(r"\b(is|are|was|were|should|will|must)\b(?! not\b)", re.IGNORECASE), r"\1 not"),
    (re.compile(r"\bcan\b(?! not\b)", re.IGNORECASE), "cannot"),
    (re.compile(r"\bcommon\b", re.IGNORECASE), "rare"),
    (re.compile(r"\brare\b", re.IGNORECASE), "common"),
    (re.compile(r"\busually\b", re.IGNORECASE), "rarely"),
    (re.compile(r"\brarely\b", re.IGNORECASE), "usually"),
    (re.compile(r"\bincreases?\b", re.IGNORECASE), "decreases"),
    (re.compile(r"\b(reduces?|decreases?|lowers?)\b", re.IGNORECASE), "increases"),
    (re.compile(r"\bworse\b", re.IGNORECASE), "better"),
    (re.compile(r"\bmore\b", re.IGNORECASE), "less"),
]


@dataclass(frozen=True)
class Doc:
    id: str
    group: str
    """The condition the passage is about (normalized): the unit of the train / held-out split."""
    condition: str
    text: str


@dataclass(frozen=True)
class Pair:
    premise: str
    hypothesis: str
    label: str
    kind: str
    """How it was made: copy, condition, site, number, polarity, other-condition."""
    doc_id: str


def load_docs(paths: Iterable[str | Path]) -> list[Doc]:
    """Read JSONL passages {id, text, condition|title[, dermatology]}; rows marked dermatology=false are skipped."""
    docs: list[Doc] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise RagqaError(f"judge corpus {p} not found (expected a JSONL file of passages with a 'text' field)")
        for n, row in iter_jsonl(p, "judge corpus", "a passage object with a 'text' field"):
            if row.get("dermatology") is False or not row.get("text"):
                continue
            condition = str(row.get("condition") or row.get("title") or "").strip()
            if not condition:
                raise RagqaError(f"{p} line {n}: needs a 'condition' or 'title' field to make in-domain pairs")
            docs.append(Doc(str(row.get("id", f"{p.name}:{n}")), condition.lower(), condition, row["text"]))
    return docs


def is_heldout(group: str, fraction: float = 0.2) -> bool:
    """Stable split by condition: the same condition is held out in every run and on every machine."""
    digest = hashlib.sha256(group.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def split_docs(docs: list[Doc], fraction: float = 0.2) -> tuple[list[Doc], list[Doc]]:
    """(train, held-out) by condition."""
    train = [d for d in docs if not is_heldout(d.group, fraction)]
    held = [d for d in docs if is_heldout(d.group, fraction)]
    return train, held


def condition_aliases(condition: str) -> list[str]:
    """Names a passage may use for its condition: 'Tinea corporis (ringworm)' -> full, 'Tinea corporis', 'ringworm'."""
    names = {condition.strip()}
    m = re.match(r"^(.*?)\s*\((.*?)\)\s*$", condition)
    if m:
        names.update(x.strip() for x in m.groups() if len(x.strip()) > 3)
    return sorted(names, key=len, reverse=True)


def _match_case(replacement: str, original: str) -> str:
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _contains(text: str, phrase: str) -> bool:
    return re.search(r"\b" + re.escape(phrase) + r"\b", text, re.IGNORECASE) is not None


@lru_cache(maxsize=8)
def _names_re(names: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")\b",
                      re.IGNORECASE)


def swap_condition(sentence: str, window: str, names: list[str], rng: random.Random) -> str | None:
    """Replace the first known condition name in the sentence by another one absent from the window."""
    m = _names_re(tuple(names)).search(sentence) if names else None
    if not m:
        return None
    name, low = m.group(0), window.lower()
    # Plain substring tests: stricter than word matches, and fast over hundreds of names.
    candidates = [c for c in names
                  if c.lower() not in name.lower() and name.lower() not in c.lower() and c.lower() not in low]
    if not candidates:
        return None
    return sentence[: m.start()] + _match_case(rng.choice(sorted(candidates)), name) + sentence[m.end():]


def swap_site(sentence: str, window: str, rng: random.Random) -> str | None:
    """Replace one body site by another of the same grammatical number that the window never mentions."""
    matches = list(_SITE_RE.finditer(sentence))
    if not matches:
        return None
    m = rng.choice(matches)
    pool = _SITES_PLURAL if m.group(0).lower() in _SITES_PLURAL else _SITES_SINGULAR
    candidates = [s for s in pool if not _contains(window, s)]
    if not candidates:
        return None
    return sentence[: m.start()] + _match_case(rng.choice(candidates), m.group(0)) + sentence[m.end():]


def swap_number(sentence: str, window: str, rng: random.Random) -> str | None:
    """Replace one number (digits or a number word) by a different one that the window never mentions."""
    matches = list(_NUMBER_RE.finditer(sentence))
    if not matches:
        return None
    m = rng.choice(matches)
    if m.group(1):
        value = float(m.group(1))
        is_int = "." not in m.group(1)
        options = [value * 2, value * 3, value + 5, value / 2, value + 10, value * 10]
        texts = [str(int(v)) if is_int and v == int(v) else f"{v:g}" for v in options if v > 0]
    else:
        texts = [w for w in _NUMBER_WORDS if w != m.group(2).lower()]
    candidates = [t for t in dict.fromkeys(texts) if t != m.group(0).lower() and not _contains(window, t)]
    if not candidates:
        return None
    return sentence[: m.start()] + _match_case(rng.choice(candidates), m.group(0)) + sentence[m.end():]


def swap_polarity(sentence: str, rng: random.Random) -> str | None:
    """Negate or un-negate one statement (is -> is not, cannot -> can, common -> rare ...)."""
    edits = [(m.start(), m.end(), _match_case(m.expand(repl), m.group(0)))
             for pattern, repl in _POLARITY for m in pattern.finditer(sentence)]
    if not edits:
        return None
    start, end, new = rng.choice(edits)
    return sentence[:start] + new + sentence[end:]


def apply_swap(kind: str, sentence: str, window: str, names: list[str], rng: random.Random) -> str | None:
    """One named swap; None when it does not apply to this sentence."""
    if kind == "condition":
        out = swap_condition(sentence, window, names, rng)
    elif kind == "site":
        out = swap_site(sentence, window, rng)
    elif kind == "number":
        out = swap_number(sentence, window, rng)
    elif kind == "polarity":
        out = swap_polarity(sentence, rng)
    else:
        raise ValueError(f"unknown swap {kind!r}")
    return out if out is not None and out != sentence else None


def _hypothesis_ok(sentence: str) -> bool:
    n = len(sentence.split())
    return MIN_WORDS <= n <= MAX_WORDS and not sentence.rstrip().endswith("?")


def _window(sentences: list[str], i: int, rng: random.Random, max_words: int = WINDOW_WORDS) -> str:
    """A run of neighbouring sentences around sentence i (always inside) of a random size up to max_words."""
    lo = hi = i
    words = len(sentences[i].split())
    limit = rng.randint(min(words, max_words), max_words)
    while True:
        grow = [j for j in (lo - 1, hi + 1) if 0 <= j < len(sentences)
                and words + len(sentences[j].split()) <= limit]
        if not grow:
            break
        j = rng.choice(grow)
        words += len(sentences[j].split())
        lo, hi = min(lo, j), max(hi, j)
    return " ".join(sentences[lo : hi + 1])


def make_pairs(docs: list[Doc], seed: int = 0, max_pairs: int | None = None,
               window_words: int = WINDOW_WORDS) -> list[Pair]:
    """Entailment / contradiction / neutral pairs from every usable sentence of every passage, shuffled.

    Premises are windows of up to `window_words` words around the hypothesis sentence.
    """
    rng = random.Random(seed)
    names = sorted({alias for d in docs for alias in condition_aliases(d.condition)})
    by_doc = {d.id: split_sentences(d.text) for d in docs}
    others = [(d.group, d.condition, s) for d in docs for s in by_doc[d.id] if _hypothesis_ok(s)]
    if len({g for g, _, _ in others}) < 2:
        raise RagqaError("judge corpus: in-domain pairs need passages about at least two conditions")
    pairs: list[Pair] = []
    for doc in docs:
        sentences = by_doc[doc.id]
        for i, sentence in enumerate(sentences):
            if not _hypothesis_ok(sentence) or len(sentence.split()) > window_words:
                continue
            window = _window(sentences, i, rng, window_words)
            pairs.append(Pair(window, sentence, "entailment", "copy", doc.id))
            # Polarity applies to almost every sentence: try it last so the other swaps are well represented.
            for kind in [*rng.sample(SWAPS[:3], 3), "polarity"]:
                swapped = apply_swap(kind, sentence, window, names, rng)
                if swapped is not None:
                    pairs.append(Pair(window, swapped, "contradiction", kind, doc.id))
                    break
            while True:
                group, condition, other = others[rng.randrange(len(others))]
                if group != doc.group:
                    break
            pairs.append(Pair(window, _rename(other, condition, doc.condition), "neutral", "other-condition", doc.id))
    rng.shuffle(pairs)
    return pairs[:max_pairs] if max_pairs else pairs


def _rename(sentence: str, old: str, new: str) -> str:
    """Another condition's sentence, about this passage's condition when it names its own (a harder neutral)."""
    for alias in condition_aliases(old):
        m = re.search(r"\b" + re.escape(alias) + r"\b", sentence, re.IGNORECASE)
        if m:
            return sentence[: m.start()] + _match_case(condition_aliases(new)[-1], m.group(0)) + sentence[m.end():]
    return sentence
