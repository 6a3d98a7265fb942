"""BM25 over the chunks with bm25s directly, tokenized as llama-index's BM25Retriever does it (English
stopwords, PyStemmer, the same token pattern).

Not BM25Retriever itself: its persist would also store every node again as JSON and it builds Node objects per
query, while the chunk store already holds the text. bm25s saves its CSC score matrix as .npy
(allow_pickle=False) plus vocab/params JSON: nothing is pickled.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

BM25_DIR = "bm25"
BM25_STOPWORDS = "en"
BM25_STEMMER = "english"
BM25_TOKEN_PATTERN = r"(?u)\b\w\w+\b"


def bm25_tokenize(texts: list[str], return_ids: bool = True):
    """bm25s tokenization as llama-index's BM25Retriever does it: English stopwords, Snowball stemmer."""
    import bm25s
    import Stemmer

    return bm25s.tokenize(texts, stopwords=BM25_STOPWORDS, stemmer=Stemmer.Stemmer(BM25_STEMMER),
                          token_pattern=BM25_TOKEN_PATTERN, return_ids=return_ids, show_progress=False)


def build_bm25(texts: list[str], out: Path) -> None:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25_tokenize(texts), show_progress=False)
    retriever.save(str(out), allow_pickle=False, show_progress=False)


def load_bm25(path: Path):
    import bm25s

    with contextlib.redirect_stdout(io.StringIO()):
        return bm25s.BM25.load(str(path), load_corpus=False, allow_pickle=False, show_progress=False)


def bm25_record() -> dict[str, str]:
    """How the BM25 index was tokenized (the manifest's "bm25" entry)."""
    return {"library": "bm25s", "stopwords": BM25_STOPWORDS, "stemmer": BM25_STEMMER,
            "token_pattern": BM25_TOKEN_PATTERN}
