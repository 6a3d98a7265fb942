"""Retrieval: dense / BM25 / hybrid (RRF) scores and ordering, chunks_of, embedder checks, rerank, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ragqa import index
from ragqa.config import load_config
from ragqa.errors import RagqaError
from ragqa.evaluate.retrieval import evaluate_retrieval, format_table, rank_metrics
from ragqa.retrieve import Retriever, same_embedder

# Hand-made so that the two retrievers disagree: the "zinc" passage matches terms (BM25), the diaper-care one
# matches the meaning (dense).
DOCS = [
    {"id": "rash", "title": "Nappy rash", "text": "Nappy rash is sore red skin in the diaper area. "
     "Barrier creams with zinc oxide protect the skin."},
    {"id": "zinc", "title": "Zinc", "text": "Zinc is a metal. Zinc zinc zinc appears in alloys, batteries and "
     "galvanised steel."},
    {"id": "diaper", "title": "Diaper care", "text": "Change wet diapers often and let the baby's bottom "
     "air dry to prevent irritation of the skin."},
    {"id": "eczema", "title": "Eczema", "text": "Eczema makes skin dry and itchy. Moisturisers and mild "
     "steroid creams calm flares."},
    {"id": "long", "title": "Long", "text": " ".join(f"Sentence number {i} talks about sunscreen." for i in range(60))},
]


@pytest.fixture(scope="module")
def retriever(tmp_path_factory, embedder):
    tmp = tmp_path_factory.mktemp("retrieve")
    corpus = tmp / "docs.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    cfg = load_config(None, [f"index.name={tmp / 'idx'}", f"index.corpus=[{corpus}]", "index.chunk_size=64",
                             "index.chunk_overlap=8"])
    path = index.ingest(cfg, embedder=embedder)
    return Retriever.load(path, embedder="minilm", embedder_model=embedder, fusion_candidates=100)


QUERY = "my baby's bottom is sore and red"


def test_modes_scores_and_dense_cosine_everywhere(retriever, embedder):
    q = embedder.encode([QUERY], normalize_embeddings=True)[0]
    for mode in ("dense", "bm25", "hybrid"):
        res = retriever.retrieve(QUERY, k=4, mode=mode)
        assert 0 < len(res) <= 4
        assert [p.score for p in res] == sorted((p.score for p in res), reverse=True)
        for p in res:
            chunk = next(c for c in retriever.chunks_of(p.doc_id) if c.chunk_id == p.chunk_id)
            text = (p.title[:64] + "\n" if p.title else "") + chunk.text
            expected = float(embedder.encode([text], normalize_embeddings=True)[0] @ q)
            assert p.scores["dense"] == pytest.approx(expected, abs=1e-4)
        key = {"dense": "dense", "bm25": "bm25", "hybrid": "rrf"}[mode]
        assert all(p.score == p.scores[key] for p in res)


def test_config_options_reach_the_retriever(retriever):
    cfg = load_config(None, [f"index.name={retriever.path}", "retrieval.rrf_k=7", "retrieval.fusion_candidates=9",
                             "retrieval.rerank_candidates=11", "retrieval.query_encoder=torch", "model.device=cpu"])
    loaded = Retriever.from_config(cfg)
    assert (loaded.rrf_k, loaded.fusion_candidates, loaded.rerank_candidates) == (7, 9, 11)
    assert loaded.query_encoder.backend == "torch"
    assert retriever.query_encoder.backend == "onnx"  # auto, on CPU


def test_hybrid_is_reciprocal_rank_fusion_of_both_lists(retriever):
    n = len(retriever)
    dense = [p.chunk_id for p in retriever.retrieve(QUERY, k=n, mode="dense")]
    bm25 = [p.chunk_id for p in retriever.retrieve(QUERY, k=n, mode="bm25")]
    assert len(bm25) < n  # chunks without a query term get no BM25 rank
    assert dense[:len(bm25)] != bm25  # the two retrievers disagree, so the fusion order is informative
    rrf: dict[str, float] = {}
    for ranked in (dense, bm25):
        for rank, cid in enumerate(ranked, start=1):
            rrf[cid] = rrf.get(cid, 0.0) + 1 / (60 + rank)
    hybrid = retriever.retrieve(QUERY, k=n, mode="hybrid")
    assert [p.chunk_id for p in hybrid] == sorted(rrf, key=lambda c: (-rrf[c], dense.index(c)))
    assert [p.score for p in hybrid] == pytest.approx([rrf[p.chunk_id] for p in hybrid])
    # rank 2 in both lists beats rank 1 in only one: 2/62 > 1/61
    fused = retriever._fuse([(1, 0.9), (2, 0.8), (3, 0.1)], [(4, 9.0), (2, 5.0)])
    assert [row for row, _, _ in fused] == [2, 1, 4, 3]


def test_chunks_of_and_len(retriever):
    chunks = retriever.chunks_of("long")
    assert len(chunks) > 2 and [c.position for c in chunks] == list(range(len(chunks)))
    assert all(c.chunk_id == f"long#{c.position}" for c in chunks)
    assert retriever.chunks_of("nope") == []
    assert len(retriever) == retriever.manifest["counts"]["chunks"] == 4 + len(chunks)


def test_edge_queries(retriever):
    with pytest.raises(RagqaError, match="empty"):
        retriever.retrieve("   ")
    with pytest.raises(RagqaError, match="mode"):
        retriever.retrieve("skin", mode="sparse")
    assert len(retriever.retrieve("skin", k=100, mode="dense")) == len(retriever)
    assert retriever.retrieve("qqqq xxxx", k=3, mode="bm25") == []  # no known term
    assert len(retriever.retrieve("qqqq xxxx", k=3, mode="hybrid")) == 3  # dense still answers
    assert retriever.retrieve("skin " * 20000 + "\x00\x07 ünïcødé", k=2, mode="hybrid")


def test_missing_index_and_embedder_mismatch(tmp_path, retriever, embedder):
    with pytest.raises(RagqaError, match=r"no index at .*nothing: run `ragqa ingest --index .*nothing` first"):
        Retriever.load(tmp_path / "nothing", embedder_model=embedder)
    with pytest.raises(RagqaError, match="no index at indexes/nothing-here: run `ragqa ingest --index nothing-here`"):
        Retriever.load("nothing-here", embedder_model=embedder)
    with pytest.raises(RagqaError, match="built with embedder 'minilm', not 'BAAI/bge-small-en-v1.5'"):
        Retriever.load(retriever.path, embedder="BAAI/bge-small-en-v1.5", embedder_model=embedder)
    assert same_embedder("minilm", "sentence-transformers/all-MiniLM-L6-v2")
    assert not same_embedder("minilm", "BAAI/bge-small-en-v1.5")


def test_rerank_missing_model_is_a_clear_error(retriever):
    with pytest.raises(RagqaError, match="reranker .no-such-reranker. not found: a trained reranker name"):
        retriever.retrieve(QUERY, k=2, rerank="no-such-reranker")


def test_rerank_with_a_local_cross_encoder(retriever, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder

    from ragqa.models import REGISTRY, packaged_path

    torch.manual_seed(0)  # an untrained head: enough to check that results follow the cross-encoder's scores
    model = CrossEncoder(str(packaged_path(REGISTRY["minilm"])), num_labels=1, device="cpu")
    model.save_pretrained(str(tmp_path / "ce"), safe_serialization=True)
    res = retriever.retrieve(QUERY, k=3, mode="hybrid", rerank=str(tmp_path / "ce"))
    assert len(res) == 3 and all("rerank" in p.scores and "rrf" in p.scores and "dense" in p.scores for p in res)
    reloaded = CrossEncoder(str(tmp_path / "ce"), device="cpu")
    candidates = retriever.retrieve(QUERY, k=retriever.rerank_candidates, mode="hybrid")
    scores = reloaded.predict([(QUERY, p.text) for p in candidates])
    best = [candidates[i].chunk_id for i in np.argsort(-scores)[:3]]
    assert [p.chunk_id for p in res] == best


def test_rank_metrics_and_evaluate(retriever):
    assert rank_metrics(["x", "g", "y"], ["g"], (1, 5)) == {"recall@1": 0.0, "recall@5": 1.0, "mrr@10": 0.5}
    assert rank_metrics(["a", "b"], ["c", "a"], (1,)) == {"recall@1": 0.5, "mrr@10": 1.0}
    rows = [{"question": "What protects a baby's skin from nappy rash?", "gold_passage_ids": ["rash"]},
            {"question": "Which creams calm itchy dry eczema?", "gold_passage_ids": ["eczema"]}]
    results = evaluate_retrieval(retriever, rows, modes=("dense", "bm25", "hybrid"), ks=(1, 5), progress=False)
    for metrics in results.values():
        assert metrics["n"] == 2 and 0 <= metrics["recall@1"] <= metrics["recall@5"] <= 1
    assert results["dense"]["recall@5"] == 1.0 and results["dense"]["mrr@10"] > 0.5
    assert "| hybrid |" in format_table(results)
