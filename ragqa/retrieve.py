"""Retrieval over a persisted index: dense (the index's vector store, ragqa.store), BM25 (bm25s), hybrid
(reciprocal rank fusion), and an optional cross-encoder rerank (ragqa.rerank; `retrieval.rerank=default` is the
one `ragqa rerank train` writes). One module used by ask, train and eval.

Hybrid fuses the two ranked lists here instead of through llama-index's QueryFusionRetriever: that one
measured 0.3-0.5 s per query on this machine (async machinery, Node objects) while both searches together
take a few milliseconds, and RRF itself is a few lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ragqa.errors import RagqaError
from ragqa.index.bm25 import BM25_DIR, bm25_tokenize, load_bm25
from ragqa.index.embed import dimension
from ragqa.index.manifest import find_index, read_chunks, read_manifest, verify_files
from ragqa.passage import SEARCH_MODES, Passage
from ragqa.store import VectorStore, load_store


def same_embedder(a: str, b: str) -> bool:
    """Equal names, or a registry name and its hub id / folder (minilm == sentence-transformers/all-MiniLM-L6-v2)."""
    from ragqa.models import REGISTRY

    def canon(name: str) -> str:
        return REGISTRY[name].hub_id if name in REGISTRY else name.rstrip("/")

    return a == b or canon(a) == canon(b)


class Retriever:
    """A loaded index (vector store, BM25, chunks) plus the embedder that built it."""

    def __init__(self, path: Path, manifest: dict[str, Any], chunks: list[dict[str, Any]], store: VectorStore, bm25,
                 embedder, rrf_k: int = 60, fusion_candidates: int = 50, rerank_candidates: int = 20,
                 query_encoder: str = "auto", rerank_backend: str = "auto", query_model=None,
                 query_card: dict[str, Any] | None = None):
        self.path = path
        self.manifest = manifest
        self.embedder = embedder
        self.rrf_k = rrf_k
        self.fusion_candidates = fusion_candidates
        self.rerank_candidates = rerank_candidates
        self._chunks = chunks
        self.store = store
        self._bm25 = bm25
        self._by_doc: dict[str, list[int]] = {}
        for row, chunk in enumerate(chunks):
            self._by_doc.setdefault(chunk["doc_id"], []).append(row)
        self._rerankers: dict[str, Any] = {}
        self.rerank_backend = rerank_backend
        self.query_backend = query_encoder
        self._query_encoder = None  # built on the first query: loads that never search pay nothing for it
        self.query_model = query_model
        """The tuned query encoder (retrieval.query_encoder_weights, ragqa.query_tuning) that embeds questions,
        or None: the index's embedder does. Passages always keep the vectors the index holds."""
        self.query_card = query_card
        """Its card, which holds the abstention cut calibrated with it (question cosines move when the question
        encoder is tuned, so the index's own cut, fitted with the base encoder, no longer applies)."""

    @classmethod
    def load(cls, index: str | Path, embedder: str | None = None, device: str = "auto", *,
             embedder_model=None, verify: bool = True, query_encoder: str = "auto", rerank_backend: str = "auto",
             query_encoder_weights: str | None = None, **options: int) -> Retriever:
        """Load indexes/NAME (or a directory), checking checksums, counts and the embedder.

        embedder: the name the caller expects (a mismatch with the index is an error, never silent garbage).
        embedder_model: an already loaded SentenceTransformer to reuse. query_encoder: auto|onnx|torch
        (ragqa.query_encoder); rerank_backend: the same for the cross-encoder (ragqa.rerank.model).
        query_encoder_weights: none, or a tuned query encoder (`default`, a name or a folder; ragqa.query_tuning)
        that embeds the questions; refused unless it was tuned from the weights that built the index.
        options: rrf_k, fusion_candidates, rerank_candidates.
        """
        where = find_index(index)
        manifest = read_manifest(where)
        built_with = manifest["embedder"]["name"]
        if embedder is not None and not same_embedder(embedder, built_with):
            raise RagqaError(f"index {where} was built with embedder '{built_with}', not '{embedder}': use "
                             f"--embedder {built_with}, or re-ingest with `ragqa ingest --embedder {embedder}`")
        verify_files(where, manifest, checksums=verify)
        chunks = read_chunks(where, manifest)
        store = load_store(where, manifest, verify)
        try:
            bm25 = load_bm25(where / BM25_DIR)
            if int(bm25.scores["num_docs"]) != len(chunks):
                raise RagqaError(f"index {where}: BM25 holds {bm25.scores['num_docs']} documents, the chunk store "
                                 f"{len(chunks)}: re-run `ragqa ingest`")
            if embedder_model is None:
                from ragqa.models import load_embedder

                embedder_model = load_embedder(built_with, device)
            dim = dimension(embedder_model)
            if dim != manifest["embedder"]["dim"]:
                raise RagqaError(f"index {where} holds {manifest['embedder']['dim']}-d vectors but embedder "
                                 f"'{built_with}' gives {dim}-d: re-run `ragqa ingest`")
            query_model, query_card = None, None
            if query_encoder_weights not in (None, "", "none"):
                from ragqa.query_tuning.model import load_query_encoder_weights

                _, query_card, query_model = load_query_encoder_weights(query_encoder_weights, where, manifest,
                                                                        embedder_model)
        except BaseException:
            store.close()  # a Qdrant local store holds its folder's lock while open
            raise
        return cls(where, manifest, chunks, store, bm25, embedder_model, query_encoder=query_encoder,
                   rerank_backend=rerank_backend, query_model=query_model, query_card=query_card, **options)

    @classmethod
    def from_config(cls, cfg) -> Retriever:
        """The retriever a run's config describes: its index, embedder, device and retrieval options."""
        r = cfg.retrieval
        return cls.load(cfg.index.name, embedder=cfg.model.embedder, device=cfg.model.device, rrf_k=r.rrf_k,
                        fusion_candidates=r.fusion_candidates, rerank_candidates=r.rerank_candidates,
                        query_encoder=r.query_encoder, rerank_backend=r.rerank_backend,
                        query_encoder_weights=r.query_encoder_weights)

    def __len__(self) -> int:
        return len(self._chunks)

    def _passage(self, row: int, score: float = 0.0, scores: dict[str, float] | None = None) -> Passage:
        c = self._chunks[row]
        return Passage(chunk_id=c["chunk_id"], doc_id=c["doc_id"], text=c["text"], title=c["title"],
                       source=c["source"], url=c["url"], position=c["position"], score=score,
                       scores=scores or {})

    def rows_of(self, doc_id: str) -> list[int]:
        """The store rows (positions in `store.vectors()`) of one document's chunks ([] for an unknown id)."""
        return list(self._by_doc.get(doc_id, []))

    def document_titles(self) -> list[str]:
        """One title per source document (what ingest calibrates abstention on)."""
        return [self._chunks[rows[0]]["title"] for rows in self._by_doc.values() if rows]

    def chunks_of(self, doc_id: str) -> list[Passage]:
        """All chunks of one source document, in order ([] for an unknown id)."""
        return [self._passage(row) for row in self._by_doc.get(doc_id, [])]

    @property
    def query_encoder(self):
        """The query embedding backend (ragqa.query_encoder) of the tuned query encoder when there is one, of the
        index's embedder otherwise; chosen on first use (an ONNX export is keyed by, and checked against, the
        weights it runs)."""
        if self._query_encoder is None:
            from ragqa.query_encoder import load_query_encoder

            model = self.query_model if self.query_model is not None else self.embedder
            self._query_encoder = load_query_encoder(model, self.query_backend)
        return self._query_encoder

    @query_encoder.setter
    def query_encoder(self, encoder) -> None:
        self._query_encoder = encoder

    def embed_query(self, query: str) -> np.ndarray:
        """The query's normalized embedding: the vector the embedder's `encode` gives (to 1e-5), sooner."""
        return self.query_encoder.embed(query)

    def _dense(self, qvec: np.ndarray, n: int) -> list[tuple[int, float]]:
        return self.store.search(qvec, n)

    def _bm25_ranked(self, query: str, n: int) -> list[tuple[int, float]]:
        ids = self._bm25.get_tokens_ids(bm25_tokenize([query], return_ids=False)[0])
        if not ids:
            return []
        scores = self._bm25.get_scores_from_ids(ids)
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.lexsort((top, -scores[top]))]  # by score, ties by row: deterministic
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]

    def _cosines(self, qvec: np.ndarray, rows: list[int]) -> dict[int, float]:
        if not rows:
            return {}
        vecs = self.store.vectors(rows)
        return dict(zip(rows, (vecs @ qvec).astype(float).tolist(), strict=True))

    def retrieve(self, query: str, k: int = 5, mode: str = "hybrid", rerank: str | None = None) -> list[Passage]:
        """Top-k chunks. Passage.score is the mode's score (cosine, BM25 or RRF; the cross-encoder's when
        reranking); Passage.scores['dense'] is the query-chunk cosine for every passage."""
        if mode not in SEARCH_MODES:
            raise RagqaError(f"retrieval mode {mode!r} is not one of {', '.join(SEARCH_MODES)}")
        if not isinstance(query, str) or not query.strip():
            raise RagqaError("the question is empty: ask something")
        if k <= 0:
            return []
        first = max(k, self.rerank_candidates) if rerank else k
        qvec = self.embed_query(query)
        if mode == "dense":
            ranked = [(row, s, {"dense": s}) for row, s in self._dense(qvec, min(first, len(self)))]
        elif mode == "bm25":
            ranked = [(row, s, {"bm25": s}) for row, s in self._bm25_ranked(query, first)]
        else:
            n = min(max(first, self.fusion_candidates), len(self))
            ranked = self._fuse(self._dense(qvec, n), self._bm25_ranked(query, n))[:first]
        cosines = self._cosines(qvec, [row for row, _, s in ranked if "dense" not in s])
        passages = [self._passage(row, score, {"dense": cosines.get(row, 0.0), **scores})
                    for row, score, scores in ranked]
        if rerank:
            passages = self._rerank(rerank, query, passages)
        return passages[:k]

    def _fuse(self, dense: list[tuple[int, float]], bm25: list[tuple[int, float]]):
        """Reciprocal rank fusion: score = sum over lists of 1 / (rrf_k + rank), rank from 1."""
        fused: dict[int, dict[str, float]] = {}
        for name, ranked in (("dense", dense), ("bm25", bm25)):
            for rank, (row, score) in enumerate(ranked, start=1):
                entry = fused.setdefault(row, {"rrf": 0.0})
                entry[name] = score
                entry["rrf"] += 1.0 / (self.rrf_k + rank)
        order = sorted(fused, key=lambda row: (-fused[row]["rrf"], -fused[row].get("dense", -1.0), row))
        return [(row, fused[row]["rrf"], fused[row]) for row in order]

    def _rerank(self, name: str, query: str, passages: list[Passage]) -> list[Passage]:
        """Rescore the first-stage candidates with the cross-encoder (Reranker.rank_logits: title line + text, on
        top of the dense cosine for a reranker trained so), one batch; ties keep first-stage order. Sets
        scores['rerank'] (the sigmoid, also the passage's score) and scores['rerank_logit'] (what relevance-based
        abstention reads)."""
        if not passages:
            return passages
        from ragqa.rerank.model import sigmoid

        logits = self.reranker(name).rank_logits(query, passages)
        for p, logit, score in zip(passages, logits, sigmoid(logits), strict=True):
            p.scores["rerank_logit"] = float(logit)
            p.scores["rerank"] = p.score = float(score)
        return sorted(passages, key=lambda p: -p.scores["rerank_logit"])

    def reranker(self, name: str):
        """The cross-encoder `name` (ragqa.rerank.load_reranker), loaded once per retriever."""
        if name not in self._rerankers:
            from ragqa.rerank.model import load_reranker

            self._rerankers[name] = load_reranker(name, str(self.embedder.device), self.rerank_backend)
        return self._rerankers[name]
