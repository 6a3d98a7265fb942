"""Sentences and passage windows: the units the judge compares.

Sentences come from NLTK's Punkt model (the English `punkt_tab` tables that llama-index ships offline),
after splitting on line breaks and list bullets, which Punkt does not treat as boundaries.
"""

from __future__ import annotations

import importlib.util
import os
import re
import string
from functools import lru_cache

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lower-case, drop punctuation, articles and citation markers, collapse spaces (SQuAD normalization)."""
    text = re.sub(r"\[\d+\]", " ", text or "").lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


_BULLET_RE = re.compile(r"\n+|\s+-\s+(?=[A-Z(])|\s*•\s*")


@lru_cache(maxsize=1)
def _punkt():
    import nltk
    from nltk.tokenize.punkt import PunktTokenizer

    spec = importlib.util.find_spec("llama_index.core")
    if spec is not None and spec.submodule_search_locations:
        cache = os.path.join(next(iter(spec.submodule_search_locations)), "_static", "nltk_cache")
        if cache not in nltk.data.path:
            nltk.data.path.insert(0, cache)
    return PunktTokenizer("english")


def split_sentences(text: str) -> list[str]:
    """Text -> sentences (line breaks and ' - ' bullets are boundaries too); empty pieces dropped."""
    return [sentence for sentence, _ in split_units(text)]


def split_units(text: str) -> list[tuple[str, bool]]:
    """split_sentences, each sentence with whether it opens a list item (it follows a ' - ' or '•' bullet, or
    its line starts with '- '; a '•' is always a separator, so no block starts with one): MedQuAD flattens its
    lists into ' - ' runs ("...of X: - Genetic Testing Registry: X - MedlinePlus Encyclopedia: X")."""
    text = text or ""
    units: list[tuple[str, bool]] = []
    start, bullet = 0, False
    for match in [*_BULLET_RE.finditer(text), None]:
        end = match.start() if match else len(text)
        block = text[start:end]
        item = bullet or block.lstrip(" \t").startswith("- ")
        block = block.strip(" -\t")
        if block:
            sentences = [s.strip() for s in _punkt().tokenize(block) if s.strip()]
            units.extend((sentence, item and i == 0) for i, sentence in enumerate(sentences))
        if match:
            start, bullet = match.end(), "-" in match.group() or "•" in match.group()
    return units


def join_units(units: list[tuple[str, bool]]) -> str:
    """split_units' inverse, up to spacing: sentences joined by spaces, list items with their ' - ' bullets."""
    return " ".join(f"- {sentence}" if item else sentence for sentence, item in units)


def windows(text: str, tokenizer, budget: int, overlap: int = 1) -> list[str]:
    """Cut a passage into windows of at most `budget` tokens, sentence-aligned.

    Consecutive windows share `overlap` sentences so a claim spanning a boundary is still seen whole.
    A single sentence longer than the budget is cut by tokens (with a quarter-budget overlap).
    """
    if budget < 8:
        raise ValueError(f"window budget of {budget} tokens is too small")
    pieces: list[tuple[str, int]] = []
    for sentence in split_sentences(text):
        n = len(tokenizer(sentence, add_special_tokens=False, verbose=False)["input_ids"])
        if n <= budget:
            pieces.append((sentence, n))
        else:
            pieces.extend((chunk, budget) for chunk in _token_chunks(sentence, tokenizer, budget))
    if not pieces:
        return []
    out: list[str] = []
    start = 0
    while True:
        end, used = start, 0
        while end < len(pieces) and used + pieces[end][1] <= budget:
            used += pieces[end][1]
            end += 1
        end = max(end, start + 1)
        out.append(" ".join(p for p, _ in pieces[start:end]))
        if end >= len(pieces):
            return out
        start = max(start + 1, end - overlap)


def _token_chunks(sentence: str, tokenizer, budget: int) -> list[str]:
    offsets = tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    step = max(1, budget - budget // 4)
    chunks = []
    for i in range(0, len(offsets), step):
        span = offsets[i : i + budget]
        chunks.append(sentence[span[0][0] : span[-1][1]])
        if i + budget >= len(offsets):
            break
    return chunks
