"""The unit retrieval returns and prompts cite: one chunk of a source document."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
