"""The unit retrieval returns and prompts cite: one chunk of a source document; and the retrieval modes.

The mode lists are defined here, once, because this module imports nothing heavy: the command line reads them
for its choices at import time, and config, serve, answer and retrieve check against the same tuples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SEARCH_MODES = ("dense", "bm25", "hybrid")
"""The ways the retriever ranks passages (ragqa.retrieve)."""
RETRIEVAL_MODES = (*SEARCH_MODES, "none")
"""What a question may be answered with: a search mode, or none (the model alone, closed book)."""


def search_mode(mode: str) -> str:
    """The search mode of a retrieval mode, for work that needs passages whatever the setting (RAFT context, the
    reranker's first stage, a matrix's rag rows): the mode itself, hybrid for none."""
    return mode if mode != "none" else "hybrid"


@dataclass
class Passage:
    chunk_id: str
    """Unique within an index: '<doc_id>#<position>'."""
    doc_id: str
    """Id of the source document (the corpus row / file) the chunk comes from."""
    text: str
    title: str = ""
    source: str = ""
    url: str = ""
    position: int = 0
    """Index of the chunk within its document."""
    score: float = 0.0
    """Score of the retrieval mode that ranked it (cosine for dense, BM25, RRF for hybrid)."""
    scores: dict[str, float] = field(default_factory=dict)
    """Per-mode scores when known, e.g. {'dense': 0.61, 'bm25': 7.2}."""

    def to_dict(self) -> dict:
        return asdict(self)
