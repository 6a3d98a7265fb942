"""The cross-encoder reranker: scores (question, passage) pairs; ragqa trains its own (`ragqa rerank train`).

Public API:
    load_reranker(name, device, backend) -> Reranker with `.name`, `.backend` and `.scores(pairs)`
    ragqa.rerank.registry                -> where trained rerankers live (import-light)
    ragqa.rerank.train.train_reranker    -> training (imports ragqa.train; never needed at inference)
"""

from ragqa.rerank.model import Reranker, load_reranker

__all__ = ["Reranker", "load_reranker"]
